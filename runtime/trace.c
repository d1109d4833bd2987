/*
** trace.c: what --trace shows (vm.h, "Traces"; docs/inspect.md).
**
** A VM traces when it holds a tracer whose function is set.  The tracer
** is one immutable, counted snapshot shared by a VM and every VM nested
** in it: a change makes a new one and installs it over the whole subtree
** (VMs nested later take their parent's when they boot), so the VM's
** own check stays one load and a compare while nothing is traced, and a
** trace function that changes the trace never sees its tracer freed
** under it.  A line is first judged by the filter, cheapest test first;
** only one that passes is given a time and formatted.
*/
#include <errno.h>
#include <fnmatch.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "pool.h"
#include "vmint.h"

static const char *const kindnames[MK_TK_COUNT] = {
  "spawn", "quit", "add", "delete", "send", "feedback", "at_meta_level",
  "presence", "absence", "message", "spawned", "resume", "meta", "deleted"
};

int mk_trace_kind(const char *name) {
  int k;
  for (k = 0; k < MK_TK_COUNT; k++)
    if (name != NULL && strcmp(name, kindnames[k]) == 0) return k;
  return -1;
}

const char *mk_trace_kind_name(int kind) {
  return kind >= 0 && kind < MK_TK_COUNT ? kindnames[kind] : NULL;
}

/* ---- tracers ------------------------------------------------------------ */

/* A ring (vm.h).  Counted: one reference for its owner until mk_ring_close,
** one per tracer that lists it.  Owns its filter (a tracer without a
** function, used for its filter alone) and its lines. */
struct mk_ring {
  mk_vm *vm;                /* the root VM it is open on; NULL once that VM
                            ** is freed or the ring closed */
  mk_tracer *filter;
  char **lines;             /* size slots, n lines from first on (circular) */
  size_t size, first, n;
  size_t dropped;           /* pushed out since the last read */
  uint32_t refs;
};

static void tracer_unref(mk_tracer *t);

static void ring_unref(mk_ring *r) {
  size_t i;
  if (--r->refs > 0) return;
  for (i = 0; i < r->n; i++) mk_pool_lib_free(r->lines[(r->first + i) % r->size]);
  mk_pool_lib_free(r->lines);
  tracer_unref(r->filter);
  free(r);
}

static void strs_free(char **s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) free(s[i]);
  free(s);
}

static void tracer_unref(mk_tracer *t) {
  if (t == NULL || --t->refs > 0) return;
  free(t->pids);
  strs_free(t->names, t->nnames);
  strs_free(t->vms, t->nvms);
  mk_unref(t->topic);
  while (t->nrings > 0) ring_unref(t->rings[--t->nrings]);
  free(t->rings);
  free(t);
}

/* Copies of n strings, or NULL (n 0, or out of memory: *ok = 0). */
static char **strs_dup(const char *const *s, size_t n, int *ok) {
  char **d;
  size_t i;
  if (n == 0) return NULL;
  d = calloc(n, sizeof *d);
  if (d == NULL) { *ok = 0; return NULL; }
  for (i = 0; i < n; i++) {
    size_t len = strlen(s[i]) + 1;
    if ((d[i] = malloc(len)) == NULL) { *ok = 0; return strs_free(d, i), NULL; }
    memcpy(d[i], s[i], len);
  }
  return d;
}

/* A tracer with fn, ud and the filter and format of `o` (NULL: all, as
** text), and the rings of `from` (may be NULL) but `drop`, and `add` (may
** be NULL); NULL when out of memory. */
static mk_tracer *tracer_new(mk_trace_fn fn, void *ud, const mk_trace_opts *o,
                             const mk_tracer *from, const mk_ring *drop, mk_ring *add) {
  mk_tracer *t = calloc(1, sizeof *t);
  size_t i, n = (from ? from->nrings : 0) + (add != NULL);
  int ok = 1;
  if (t == NULL) return NULL;
  t->refs = 1;
  t->fn = fn;
  t->ud = ud;
  if (n > 0 && (t->rings = malloc(n * sizeof *t->rings)) == NULL) { free(t); return NULL; }
  for (i = 0; from && i < from->nrings; i++)
    if (from->rings[i] != drop) t->rings[t->nrings++] = from->rings[i];
  if (add) t->rings[t->nrings++] = add;
  for (i = 0; i < t->nrings; i++) t->rings[i]->refs++;
  t->on = fn != NULL || t->nrings > 0;
  if (o == NULL) return t;
  t->kinds = o->kinds;
  t->none = o->none != 0;
  t->json = o->json != 0;
  t->topic = mk_ref(o->topic);
  if (o->npids > 0) {
    t->pids = malloc(o->npids * sizeof *t->pids);
    if (t->pids == NULL) ok = 0;
    else memcpy(t->pids, o->pids, o->npids * sizeof *t->pids), t->npids = o->npids;
  }
  t->names = strs_dup(o->names, o->nnames, &ok);
  t->nnames = t->names ? o->nnames : 0;
  t->vms = strs_dup(o->vms, o->nvms, &ok);
  t->nvms = t->vms ? o->nvms : 0;
  if (!ok) { tracer_unref(t); return NULL; }
  return t;
}

/* The options `t` was made with (borrowed from t). */
static mk_trace_opts tracer_opts(const mk_tracer *t) {
  mk_trace_opts o;
  o.pids = t->pids;
  o.npids = t->npids;
  o.names = (const char *const *)t->names;
  o.nnames = t->nnames;
  o.vms = (const char *const *)t->vms;
  o.nvms = t->nvms;
  o.kinds = t->kinds;
  o.topic = t->topic;
  o.none = t->none;
  o.json = t->json;
  return o;
}

/* Give vm and every VM nested in it (booted so far) the tracer t (NULL:
** none). */
static void install(mk_vm *vm, mk_tracer *t) {
  size_t i;
  if (t) t->refs++;
  tracer_unref(vm->trace);
  vm->trace = t;
  for (i = 0; i < vm->ptabsize; i++) {
    mk_proc *p;
    for (p = vm->ptab[i]; p; p = p->hnext) {
      mk_vm *child = p->b == &mk_nested_behavior ? p->data : NULL;
      if (child != NULL && child->parent == vm) install(child, t);
    }
  }
}

void mkI_trace_inherit(mk_vm *vm, const mk_vm *parent) {
  if (parent->trace) parent->trace->refs++;
  tracer_unref(vm->trace);
  vm->trace = parent->trace;
}

void mkI_trace_release(mk_vm *vm) {
  size_t i;
  for (i = 0; vm->trace && i < vm->trace->nrings; i++)
    if (vm->trace->rings[i]->vm == vm) vm->trace->rings[i]->vm = NULL;
  tracer_unref(vm->trace);
  vm->trace = NULL;
}

/* The trace of vm's tree: fn, ud and o, the rings as they were but `drop`,
** and `add`. */
static int replace(mk_vm *vm, mk_trace_fn fn, void *ud, const mk_trace_opts *o,
                   const mk_ring *drop, mk_ring *add) {
  mk_tracer *t, *old = vm->trace;
  size_t i, kept = 0;
  for (i = 0; old && i < old->nrings; i++) kept += old->rings[i] != drop;
  if (fn == NULL && o == NULL && kept == 0 && add == NULL) t = NULL;   /* nothing left */
  else if ((t = tracer_new(fn, ud, o, old, drop, add)) == NULL) return -1;
  install(vm, t);
  if (t) tracer_unref(t);
  return 0;
}

void mk_vm_set_trace(mk_vm *vm, mk_trace_fn fn, void *ud) {
  mk_trace_opts o;
  if (vm->trace) o = tracer_opts(vm->trace);
  if (replace(vm, fn, ud, vm->trace ? &o : NULL, NULL, NULL) != 0) {
    fputs("market: out of memory\n", stderr);     /* vm.c's policy */
    abort();
  }
}

mk_trace_fn mk_vm_trace_fn(const mk_vm *vm, void **ud) {
  if (ud != NULL) *ud = vm->trace ? vm->trace->ud : NULL;
  return vm->trace ? vm->trace->fn : NULL;
}

/* n globs, none NULL (the array NULL only when n is 0). */
static int globs_ok(const char *const *s, size_t n) {
  size_t i;
  if (n > 0 && s == NULL) return 0;
  for (i = 0; i < n; i++)
    if (s[i] == NULL) return 0;
  return 1;
}

static int malformed(const mk_trace_opts *o) {
  return o != NULL && ((o->npids > 0 && o->pids == NULL) || !globs_ok(o->names, o->nnames) ||
                       !globs_ok(o->vms, o->nvms) || (o->kinds >> MK_TK_COUNT) != 0);
}

int mk_vm_set_trace_opts(mk_vm *vm, const mk_trace_opts *o) {
  mk_trace_opts all;
  if (malformed(o)) return -1;
  if (o == NULL) {
    memset(&all, 0, sizeof all);
    o = &all;
  }
  return replace(vm, vm->trace ? vm->trace->fn : NULL, vm->trace ? vm->trace->ud : NULL, o,
                 NULL, NULL) ? -2 : 0;
}

/* ---- rings --------------------------------------------------------------- */

/* The tree's trace as it is, with the rings changed: `drop` left out,
** `add` added. */
static int rering(mk_vm *root, const mk_ring *drop, mk_ring *add) {
  const mk_tracer *t = root->trace;
  mk_trace_opts o;
  if (t) o = tracer_opts(t);
  return replace(root, t ? t->fn : NULL, t ? t->ud : NULL, t ? &o : NULL, drop, add);
}

mk_ring *mk_vm_ring_open(mk_vm *vm, const mk_trace_opts *opts, size_t size) {
  mk_ring *r;
  mk_trace_opts o;
  if (malformed(opts) || size == 0 || size > SIZE_MAX / sizeof(char *)) {
    errno = EINVAL;
    return NULL;
  }
  while (vm->parent) vm = vm->parent;
  if (opts) o = *opts;
  else memset(&o, 0, sizeof o);
  o.json = 1;
  if ((r = calloc(1, sizeof *r)) == NULL) return NULL;
  r->refs = 1;
  r->size = size;
  r->vm = vm;
  /* The line array and the lines are counted with the memory limit
  ** (pool.h: a library's memory, never refused, so that a trace line is
  ** never what fails): a ring of millions of long lines was memory the
  ** limit did not see.  An array past the limit is refused at once. */
  if ((r->filter = tracer_new(NULL, NULL, &o, NULL, NULL, NULL)) == NULL ||
      (mk_pool_limit() > 0 && (mk_pool_used() > mk_pool_limit() ||
                               size * sizeof *r->lines > mk_pool_limit() - mk_pool_used())) ||
      (r->lines = mk_pool_lib_malloc(size * sizeof *r->lines)) == NULL ||
      rering(vm, NULL, r) != 0) {
    ring_unref(r);
    errno = ENOMEM;
    return NULL;
  }
  return r;
}

size_t mk_ring_read(mk_ring *r, mk_trace_fn fn, void *ud) {
  size_t dropped = r->dropped;
  /* fn may make lines (it may run Lua): take the lines out first.  It
  ** may close the ring too (a finalizer run by its allocation): a
  ** reference of the read's own keeps r until the loop is done. */
  r->refs++;
  while (r->n > 0) {
    char *line = r->lines[r->first];
    r->first = (r->first + 1) % r->size;
    r->n--;
    if (fn) fn(ud, line);
    mk_pool_lib_free(line);
  }
  r->dropped = 0;
  ring_unref(r);
  return dropped;
}

void mk_ring_close(mk_ring *r) {
  if (r == NULL) return;
  mk_ring_read(r, NULL, NULL);
  /* Out of memory leaves the ring listed by the tree's tracers, closed
  ** (r->vm NULL: it keeps nothing), until the trace changes again. */
  if (r->vm != NULL) (void)rering(r->vm, r, NULL);
  r->vm = NULL;
  ring_unref(r);
}

static void ring_push(mk_ring *r, const char *line, size_t len) {
  char *copy;
  if (r->vm == NULL || (copy = mk_pool_lib_malloc(len + 1)) == NULL) return;
  memcpy(copy, line, len + 1);
  if (r->n == r->size) {                /* the oldest goes */
    mk_pool_lib_free(r->lines[r->first]);
    r->first = (r->first + 1) % r->size;
    r->n--;
    r->dropped++;
  }
  r->lines[(r->first + r->n) % r->size] = copy;
  r->n++;
}

/* ---- the filter --------------------------------------------------------- */

static int globbed(char *const *globs, size_t n, const char *s) {
  size_t i;
  if (n == 0) return 1;
  if (s == NULL) return 0;
  for (i = 0; i < n; i++)
    if (fnmatch(globs[i], s, 0) == 0) return 1;
  return 0;
}

static int shown(const mk_tracer *t, const mk_proc *p, int kind, const mk_term *topic) {
  size_t i;
  if (t->none || (t->kinds && !(t->kinds & (1u << kind)))) return 0;
  if (t->npids > 0) {
    for (i = 0; i < t->npids && t->pids[i] != p->pid; i++) {}
    if (i == t->npids) return 0;
  }
  if (!globbed(t->vms, t->nvms, p->vm->path)) return 0;
  if (!globbed(t->names, t->nnames, mk_proc_name(p))) return 0;
  return t->topic == NULL || (topic != NULL && mk_unifies(t->topic, topic));
}

/* ---- lines -------------------------------------------------------------- */

/* A line is written into an mk_jbuf (json.h): it grows as needed, and is
** dropped once an allocation failed (`oom`). */

/* Text owned by the caller (malloc'd, may be NULL: out of memory). */
static void addfree(mk_jbuf *b, char *s) {
  if (s == NULL) b->oom = 1; else mk_jbuf_adds(b, s);
  free(s);
}

/* UTC to the millisecond, as market.log's lines have it. */
static void addtime(mk_jbuf *b) {
  struct timespec ts;
  struct tm tm;
  char s[80];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  snprintf(s, sizeof s, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
           (int)(ts.tv_nsec / 1000000));
  mk_jbuf_adds(b, s);
}

/* How much of a line one term's JSON form may take before it is shown
** cut instead (docs/inspect.md). */
#define JSON_SHOWN (4 * MK_REPR_SHOWN)

/* A term for a JSON line: its JSON form, or {"cut": its text cut short}
** when that form would be long (a term the program did not bound). */
static void addjson(mk_jbuf *b, const mk_term *t) {
  size_t mark = b->n;
  char *s;
  if (mk_json_term(b, t, mark + JSON_SHOWN) || b->oom) return;
  b->n = mark;
  mk_jbuf_adds(b, "{\"cut\":");
  if ((s = mk_repr_max(t, MK_REPR_SHOWN, NULL)) == NULL) { b->oom = 1; return; }
  mk_json_str(b, s, strlen(s), 1);
  free(s);
  mk_jbuf_adds(b, "}");
}

static void addkey(mk_jbuf *b, const char *key) {
  mk_jbuf_adds(b, ",\"");
  mk_jbuf_adds(b, key);
  mk_jbuf_adds(b, "\":");
}

static void addjname(mk_jbuf *b, const char *key, const char *s) {
  addkey(b, key);
  if (s == NULL) mk_jbuf_adds(b, "null"); else mk_json_str(b, s, strlen(s), 1);
}

/* A message's lines carry the message, the others the reason. */
static int carries_message(int kind) {
  return kind == MK_TK_SEND || kind == MK_TK_FEEDBACK || kind == MK_TK_MESSAGE;
}

static void json_line(mk_jbuf *b, const mk_proc *p, int kind, const char *ep,
                      const mk_role *role, const mk_term *extra) {
  char pid[32];
  mk_jbuf_adds(b, "{\"time\":\"");
  addtime(b);
  mk_jbuf_adds(b, "\"");
  addjname(b, "vm", p->vm->path);
  snprintf(pid, sizeof pid, "%llu", (unsigned long long)p->pid);
  addkey(b, "pid");
  mk_jbuf_adds(b, pid);
  addjname(b, "name", mk_proc_name(p));
  addjname(b, "kind", kindnames[kind]);
  if (kind == MK_TK_SPAWN) addjname(b, "behavior", p->b->kind ? p->b->kind : "?");
  if (ep) addjname(b, "endpoint", ep);
  if (role) {
    addjname(b, "orientation", mk_orientation_name(role->orientation));
    addjname(b, "interest", mk_interest_name(role->interest));
    addkey(b, "topic");
    addjson(b, role->topic);
  }
  if (extra) {
    addkey(b, carries_message(kind) ? "message" : "reason");
    addjson(b, extra);
  }
  mk_jbuf_adds(b, "}");
}

/* "TIME VM-path #pid name: kind [behaviour] [endpoint] [role topic] [term]" */
static void text_line(mk_jbuf *b, const mk_proc *p, int kind, const char *ep,
                      const mk_role *role, const mk_term *extra) {
  char pid[32];
  addtime(b);
  mk_jbuf_adds(b, " ");
  mk_jbuf_adds(b, p->vm->path);
  snprintf(pid, sizeof pid, " #%llu ", (unsigned long long)p->pid);
  mk_jbuf_adds(b, pid);
  mk_jbuf_addname(b, mk_proc_name(p) ? mk_proc_name(p) : "-");
  mk_jbuf_adds(b, ": ");
  mk_jbuf_adds(b, kindnames[kind]);
  if (kind == MK_TK_SPAWN) { mk_jbuf_adds(b, " "); mk_jbuf_adds(b, p->b->kind ? p->b->kind : "?"); }
  if (ep) { mk_jbuf_adds(b, " "); mk_jbuf_addname(b, ep); }
  if (role) {
    mk_jbuf_adds(b, " ");
    mk_jbuf_adds(b, mk_orientation_name(role->orientation));
    mk_jbuf_adds(b, "/");
    mk_jbuf_adds(b, mk_interest_name(role->interest));
    mk_jbuf_adds(b, " ");
    addfree(b, mk_repr_max(role->topic, MK_REPR_SHOWN, NULL));
  }
  if (extra) { mk_jbuf_adds(b, " "); addfree(b, mk_repr_max(extra, MK_REPR_SHOWN, NULL)); }
}

void mkI_trace_proc(mk_proc *p, int kind, const char *ep, const mk_role *role,
                    const mk_term *extra) {
  mk_tracer *t = p->vm->trace;
  const mk_term *topic = carries_message(kind) ? extra : role ? role->topic : NULL;
  mk_jbuf text = {NULL, 0, 0, 0}, json = {NULL, 0, 0, 0};
  size_t i;
  if (t == NULL || !t->on) return;
  t->refs++;             /* the function may change the trace */
  if (t->fn && shown(t, p, kind, topic)) {
    mk_jbuf *b = t->json ? &json : &text;
    if (t->json) json_line(b, p, kind, ep, role, extra);
    else text_line(b, p, kind, ep, role, extra);
    if (!b->oom) t->fn(t->ud, b->p);
  }
  /* A ring's line is the JSON line, made once for all. */
  for (i = 0; i < t->nrings; i++) {
    if (!shown(t->rings[i]->filter, p, kind, topic)) continue;
    if (json.p == NULL && !json.oom) json_line(&json, p, kind, ep, role, extra);
    if (!json.oom) ring_push(t->rings[i], json.p, json.n);
  }
  tracer_unref(t);
  free(text.p);
  free(json.p);
}

/*
** ground.c: the ground VM: an mk_vm plus libev watchers for ground events.
**
** Watches are shared: every subscription to an equal ground-event record
** counts toward one watcher, stopped when the count drops to zero.  The VM
** runs from a prepare watcher, i.e. after the callbacks of one poll and
** before the next, so a burst of readiness is handled in one batch.
*/
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ground.h"

mk_rtype *mk_ground_readable, *mk_ground_writable, *mk_ground_alarm, *mk_ground_signal;
static int ground_types_users;

typedef struct watch {
  struct watch *next;       /* hash chain */
  mk_ground *g;
  mk_term *topic;           /* owned: the record sent when it fires */
  size_t count;             /* subscriptions */
  int kind;                 /* 0 io, 1 timer, 2 signal */
  union { ev_io io; ev_timer timer; ev_signal sig; } w;
} watch;

struct mk_ground {
  struct ev_loop *loop;
  mk_vm *vm;
  ev_prepare prepare;
  watch **tab;              /* chained by mk_hash(topic) */
  size_t tabsize, nwatch, active;
};

static void fire(mk_ground *g, watch *w) {
  mk_term *t = mk_ref(w->topic);   /* the watch may go while routing */
  mk_vm_send(g->vm, t, 0);
  mk_unref(t);
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents) {
  watch *w = io->data;
  fire(w->g, w);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  watch *w = t->data;
  w->g->active--;            /* one-shot: no longer something to wait on */
  fire(w->g, w);
}

static void signal_cb(struct ev_loop *loop, ev_signal *s, int revents) {
  watch *w = s->data;
  fire(w->g, w);
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents) {
  mk_ground *g = p->data;
  mk_vm_run(g->vm);
}

static int number(const mk_term *t, double *out) {
  if (t->kind == MK_INT) { *out = (double)t->v.i; return 1; }
  if (t->kind == MK_FLOAT) { *out = t->v.f; return 1; }
  return 0;
}

/* Which ground event, if any, a subscription topic names. */
static int ground_kind(const mk_term *t, double *arg) {
  if (t->kind != MK_REC || !number(mk_items(t)[0], arg)) return -1;
  if (t->v.rt == mk_ground_readable || t->v.rt == mk_ground_writable) return 0;
  if (t->v.rt == mk_ground_alarm) return 1;
  if (t->v.rt == mk_ground_signal) return 2;
  return -1;
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

static void subscribed(mk_vm *vm, const mk_term *topic, void *ud) {
  mk_ground *g = ud;
  double arg;
  int kind = ground_kind(topic, &arg);
  watch **pp, *w;
  if (kind < 0) return;
  pp = find(g, topic);
  if (*pp) { (*pp)->count++; return; }
  w = calloc(1, sizeof *w);
  if (w == NULL) return;
  w->g = g;
  w->topic = mk_ref((mk_term *)topic);
  w->count = 1;
  w->kind = kind;
  switch (kind) {
    case 0:
      ev_io_init(&w->w.io, io_cb, (int)arg,
                 topic->v.rt == mk_ground_readable ? EV_READ : EV_WRITE);
      w->w.io.data = w;
      ev_io_start(g->loop, &w->w.io);
      break;
    case 1: {
      double delay = arg / 1000.0 - ev_now(g->loop);
      ev_timer_init(&w->w.timer, timer_cb, delay > 0 ? delay : 0, 0);
      w->w.timer.data = w;
      ev_timer_start(g->loop, &w->w.timer);
      break;
    }
    default:
      ev_signal_init(&w->w.sig, signal_cb, (int)arg);
      w->w.sig.data = w;
      ev_signal_start(g->loop, &w->w.sig);
      break;
  }
  g->active++;
  w->next = *pp;
  *pp = w;
  if (++g->nwatch > g->tabsize) grow(g);
}

static void stop(mk_ground *g, watch *w) {
  switch (w->kind) {
    case 0: ev_io_stop(g->loop, &w->w.io); g->active--; break;
    case 1:
      if (ev_is_active(&w->w.timer)) { ev_timer_stop(g->loop, &w->w.timer); g->active--; }
      break;
    default: ev_signal_stop(g->loop, &w->w.sig); g->active--; break;
  }
}

static void unsubscribed(mk_vm *vm, const mk_term *topic, void *ud) {
  mk_ground *g = ud;
  double arg;
  watch **pp, *w;
  if (ground_kind(topic, &arg) < 0) return;
  pp = find(g, topic);
  if ((w = *pp) == NULL || --w->count > 0) return;
  *pp = w->next;
  g->nwatch--;
  stop(g, w);
  mk_unref(w->topic);
  free(w);
}

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
    mk_ground_readable = rtype1("market:readable", "fd");
    mk_ground_writable = rtype1("market:writable", "fd");
    mk_ground_alarm = rtype1("market:alarm", "msecs");
    mk_ground_signal = rtype1("market:signal", "signum");
  }
  hooks.subscribed = subscribed;
  hooks.unsubscribed = unsubscribed;
  hooks.ud = g;
  mk_vm_set_hooks(g->vm, &hooks);
  ev_prepare_init(&g->prepare, prepare_cb);
  g->prepare.data = g;
  ev_prepare_start(loop, &g->prepare);
  ev_unref(loop);            /* the prepare alone is nothing to wait on */
  return g;
}

mk_vm *mk_ground_vm(mk_ground *g) { return g->vm; }
struct ev_loop *mk_ground_loop(mk_ground *g) { return g->loop; }
size_t mk_ground_watching(const mk_ground *g) { return g->active; }
double mk_ground_now(mk_ground *g) { return ev_now(g->loop) * 1000.0; }

int mk_ground_run(mk_ground *g) {
  for (;;) {
    mk_vm_run(g->vm);
    if (g->active == 0 && mk_vm_idle(g->vm)) return 0;
    ev_run(g->loop, EVRUN_ONCE);
  }
}

int mk_ground_step(mk_ground *g) {
  mk_vm_run(g->vm);
  if (g->active > 0) ev_run(g->loop, EVRUN_NOWAIT);
  mk_vm_run(g->vm);
  return g->active > 0 || !mk_vm_idle(g->vm);
}

void mk_ground_free(mk_ground *g, mk_term *reason) {
  size_t i;
  if (g == NULL) return;
  mk_vm_free(g->vm, reason);     /* unsubscribes everything it watched */
  for (i = 0; i < g->tabsize; i++) {
    watch *w = g->tab[i], *nx;
    for (; w; w = nx) { nx = w->next; stop(g, w); mk_unref(w->topic); free(w); }
  }
  free(g->tab);
  ev_ref(g->loop);
  ev_prepare_stop(g->loop, &g->prepare);
  if (--ground_types_users == 0) {
    mk_rtype_unref(mk_ground_readable);
    mk_rtype_unref(mk_ground_writable);
    mk_rtype_unref(mk_ground_alarm);
    mk_rtype_unref(mk_ground_signal);
    mk_ground_readable = mk_ground_writable = mk_ground_alarm = mk_ground_signal = NULL;
  }
  free(g);
}

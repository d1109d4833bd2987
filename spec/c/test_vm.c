/*
** test_vm.c: the VM semantics of DESIGN §1, exercised with native C
** processes.  A "recorder" process logs every event it receives as a line
** of text ("presence ep subscriber/participant rec(3, 5)") into a log owned
** by the test, so the log survives the process, and runs an optional
** script (a C function) that performs the actions under test.
*/
#include <errno.h>
#include <ev.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "heap.h"
#include "ground.h"
#include "pool.h"      /* MK_SANITIZED */
#include "vmint.h"   /* MK_A_META nodes: at_meta_level two levels up */

/* ---- logs --------------------------------------------------------------- */

typedef struct strlog {
  char **v;
  size_t n, cap;
} strlog;

static strlog glog;   /* every event of every recorder, as "TAG: line" */

static void log_add(strlog *l, const char *s) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 16;
    l->v = realloc(l->v, l->cap * sizeof *l->v);
    if (l->v == NULL) abort();
  }
  l->v[l->n] = strdup(s);
  if (l->v[l->n] == NULL) abort();
  l->n++;
}

static void log_free(strlog *l) {
  size_t i;
  for (i = 0; i < l->n; i++) free(l->v[i]);
  free(l->v);
  memset(l, 0, sizeof *l);
}

static int log_count(const strlog *l, const char *s) {
  size_t i;
  int n = 0;
  for (i = 0; i < l->n; i++) n += strcmp(l->v[i], s) == 0;
  return n;
}

static int log_count_prefix(const strlog *l, const char *prefix) {
  size_t i, k = strlen(prefix);
  int n = 0;
  for (i = 0; i < l->n; i++) n += strncmp(l->v[i], prefix, k) == 0;
  return n;
}

/* Index of the first line equal to s, or -1. */
static int log_find(const strlog *l, const char *s) {
  size_t i;
  for (i = 0; i < l->n; i++)
    if (strcmp(l->v[i], s) == 0) return (int)i;
  return -1;
}

static void log_dump(const strlog *l, const char *title) {
  size_t i;
  fprintf(stderr, "  --- %s (%zu lines)\n", title, l->n);
  for (i = 0; i < l->n; i++) fprintf(stderr, "    %s\n", l->v[i]);
}

/* ---- terms -------------------------------------------------------------- */

static mk_rtype *RT2, *CTL;   /* rec(a, b) and ctl(tag) */

static mk_term *I(int64_t i) { return mk_int(i); }
static mk_term *W(void) { return mk_wild(); }
static mk_term *R(mk_term *a, mk_term *b) { return mk_rec(RT2, a, b); }
static mk_term *Ctl(const char *tag) { return mk_rec(CTL, mk_cstr(tag)); }

static mk_role role(mk_orientation o, mk_interest i, mk_term *topic) {
  mk_role r;
  r.orientation = o;
  r.interest = i;
  r.topic = topic;
  return r;
}

/* ---- the recorder process ----------------------------------------------- */

typedef struct epspec {
  const char *name;
  mk_orientation o;
  mk_interest i;
  mk_term *topic;   /* owned by the spec */
  int meta;
} epspec;

typedef struct rec rec;
typedef void (*script_fn)(mk_proc *p, const mk_event *ev, rec *r);

struct rec {
  const char *tag;
  strlog log;
  epspec eps[6];
  int neps;
  script_fn fn;
  int mode;              /* what the script does; per test */
  void *ud;              /* per test */
  int64_t num;           /* per test */
  mk_pid pid, spawned;
  char path[64];         /* mk_vm_path of its VM at boot */
  int boots, destroyed, released;
  int ret[8];            /* return values the script recorded */
  int nret;
  char msgrole[128];     /* role of the last message event */
};

static void rec_init(rec *r, const char *tag) {
  memset(r, 0, sizeof *r);
  r->tag = tag;
}

/* Add an endpoint spec (the topic is stolen). */
static void rec_ep(rec *r, const char *name, mk_orientation o, mk_interest i,
                   mk_term *topic, int meta) {
  epspec *e = &r->eps[r->neps++];
  e->name = name;
  e->o = o;
  e->i = i;
  e->topic = topic;
  e->meta = meta;
}

/* A ctl(tag) subscription, to poke the process from the test. */
static void rec_ctl(rec *r) {
  rec_ep(r, "ctl", MK_SUBSCRIBER, MK_PARTICIPANT, Ctl(r->tag), 0);
}

static void rec_done(rec *r) {
  int i;
  for (i = 0; i < r->neps; i++) mk_unref(r->eps[i].topic);
  log_free(&r->log);
}

static void rec_ret(rec *r, int v) {
  if (r->nret < 8) r->ret[r->nret++] = v;
}

static const char *ori(mk_orientation o) { return mk_orientation_name(o); }
static const char *intr(mk_interest i) { return mk_interest_name(i); }

static void fmt_event(const mk_event *ev, char *line, size_t size) {
  char meta[8] = "";
  char *t = NULL, *x = NULL;
  if (ev->meta) snprintf(meta, sizeof meta, "@%d", ev->meta);
  switch (ev->type) {
    case MK_EV_BOOT: snprintf(line, size, "boot"); break;
    case MK_EV_PRESENCE:
      t = ev->role.topic ? mk_repr(ev->role.topic, NULL) : NULL;
      snprintf(line, size, "presence%s %s %s/%s %s", meta, ev->endpoint,
               ori(ev->role.orientation), intr(ev->role.interest), t ? t : "NULL");
      break;
    case MK_EV_ABSENCE:
      t = ev->role.topic ? mk_repr(ev->role.topic, NULL) : NULL;
      x = ev->reason ? mk_repr(ev->reason, NULL) : NULL;
      snprintf(line, size, "absence%s %s %s/%s %s %s%s", meta, ev->endpoint,
               ori(ev->role.orientation), intr(ev->role.interest), t ? t : "NULL",
               x ? x : "nil", ev->deleted ? " (deleted)" : "");
      break;
    case MK_EV_DELETED:
      snprintf(line, size, "deleted%s %s", meta, ev->endpoint);
      break;
    case MK_EV_MESSAGE:
      x = ev->message ? mk_repr(ev->message, NULL) : NULL;
      snprintf(line, size, "message%s %s %s", meta, ev->endpoint, x ? x : "NULL");
      break;
    case MK_EV_SPAWNED:
      snprintf(line, size, "spawned %s", ev->cont ? (const char *)ev->cont : "-");
      break;
    case MK_EV_RESUME:
      snprintf(line, size, "resume %s", ev->cont ? (const char *)ev->cont : "-");
      break;
    default: snprintf(line, size, "event %d", (int)ev->type); break;
  }
  free(t);
  free(x);
}

static void rec_handle(mk_proc *p, const mk_event *ev) {
  rec *r = mk_proc_data(p);
  char line[512], gline[600];
  int i;
  fmt_event(ev, line, sizeof line);
  log_add(&r->log, line);
  snprintf(gline, sizeof gline, "%s: %s", r->tag, line);
  log_add(&glog, gline);
  if (ev->type == MK_EV_BOOT) {
    r->pid = mk_proc_pid(p);
    r->boots++;
    snprintf(r->path, sizeof r->path, "%s", mk_vm_path(mk_proc_vm(p)));
    for (i = 0; i < r->neps; i++) {
      epspec *e = &r->eps[i];
      mk_add_endpoint(p, e->name, e->meta, role(e->o, e->i, e->topic));
    }
  } else if (ev->type == MK_EV_SPAWNED) {
    r->spawned = ev->pid;
  } else if (ev->type == MK_EV_MESSAGE) {
    char *t = ev->role.topic ? mk_repr(ev->role.topic, NULL) : NULL;
    snprintf(r->msgrole, sizeof r->msgrole, "%s/%s %s", ori(ev->role.orientation),
             intr(ev->role.interest), t ? t : "NULL");
    free(t);
  }
  if (r->fn) r->fn(p, ev, r);
}

static void rec_release(mk_proc *p, void *cont) {
  rec *r = mk_proc_data(p);
  r->released++;
}

static void rec_destroy(mk_proc *p) {
  rec *r = mk_proc_data(p);
  r->destroyed++;
}

static const mk_behavior recb = { "rec", rec_handle, rec_release, rec_destroy, NULL, 0, NULL, NULL };
/* The same, told of its own deleted endpoints (Marketplace's delete-endpoint). */
static const mk_behavior toldb = { "told", rec_handle, rec_release, rec_destroy, NULL,
                                   MK_BF_TELL_DELETED, NULL, NULL };

static mk_pid spawn(mk_vm *vm, rec *r) {
  return mk_vm_spawn(vm, &recb, r, r->tag);
}

static void poke(mk_vm *vm, const char *tag) {
  mk_term *t = Ctl(tag);
  mk_vm_send(vm, t, 0);
  mk_unref(t);
}

static int is_ctl(const mk_event *ev) {
  return ev->type == MK_EV_MESSAGE && strcmp(ev->endpoint, "ctl") == 0;
}

static mk_action *meta_list(mk_action *list) {
  mk_action *a = calloc(1, sizeof *a);
  if (a == NULL) abort();
  a->type = MK_A_META;
  a->list = list;
  return a;
}

/* Every test starts and ends with the same number of live terms. */
#define BEGIN size_t term_base = mk_term_live(); log_free(&glog)
#define END do { CHECK(mk_term_live() == term_base); \
    if (check_failed_now) { log_dump(&glog, "global event log"); } \
    log_free(&glog); } while (0)

/* ---- visibility, presence, absence -------------------------------------- */

/* Removal of A's endpoint: 0 delete, 1 quit with a reason, 2 crash. */
static void vis_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  switch (r->mode) {
    case 0: rec_ret(r, mk_delete_endpoint(p, "ep", 0, NULL)); break;
    case 1: t = mk_cstr("bye"); rec_ret(r, mk_quit(p, 0, t)); mk_unref(t); break;
    default: t = mk_cstr("boom"); mk_fail(p, t); mk_unref(t); break;
  }
}

/* sees[seer][seen], written out from DESIGN §1, not from vm.c. */
static const int sees[3][3] = {
  /* participant sees */ {1, 0, 0},
  /* observer sees    */ {1, 0, 0},
  /* everything sees  */ {1, 1, 1},
};

static void test_visibility_matrix(void) {
  BEGIN;
  int oa, ia, ib, order, mode, combos = 0;
  static const char *const reasons[] = {"nil", "\"bye\"", "\"boom\""};
  for (oa = 0; oa < 2; oa++)
    for (ia = 0; ia < 3; ia++)
      for (ib = 0; ib < 3; ib++)
        for (order = 0; order < 2; order++)
          for (mode = 0; mode < 3; mode++) {
            int before = check_failed_now;
            mk_vm *vm = mk_vm_new();
            rec a, b;
            mk_orientation ob = oa ? MK_PUBLISHER : MK_SUBSCRIBER;
            char want[256];
            combos++;
            check_failed_now = 0;
            rec_init(&a, "A");
            rec_init(&b, "B");
            rec_ep(&a, "ep", (mk_orientation)oa, (mk_interest)ia, R(W(), I(5)), 0);
            rec_ctl(&a);
            a.fn = vis_script;
            a.mode = mode;
            rec_ep(&b, "ep", ob, (mk_interest)ib, R(I(3), W()), 0);
            if (order == 0) { spawn(vm, &a); mk_vm_run(vm); spawn(vm, &b); }
            else { spawn(vm, &b); mk_vm_run(vm); spawn(vm, &a); }
            mk_vm_run(vm);
            /* presence: A hears of B when A can see B, and vice versa */
            snprintf(want, sizeof want, "presence ep %s/%s rec(3, 5)", ori(ob),
                     intr((mk_interest)ib));
            CHECK(log_count(&a.log, want) == sees[ia][ib]);
            CHECK(log_count_prefix(&a.log, "presence") == sees[ia][ib]);
            snprintf(want, sizeof want, "presence ep %s/%s rec(3, 5)",
                     ori((mk_orientation)oa), intr((mk_interest)ia));
            CHECK(log_count(&b.log, want) == sees[ib][ia]);
            CHECK(log_count_prefix(&b.log, "presence") == sees[ib][ia]);
            /* removal of A's endpoint: B hears iff it saw A */
            poke(vm, "A");
            mk_vm_run(vm);
            snprintf(want, sizeof want, "absence ep %s/%s rec(3, 5) %s",
                     ori((mk_orientation)oa), intr((mk_interest)ia), reasons[mode]);
            CHECK(log_count(&b.log, want) == sees[ib][ia]);
            CHECK(log_count_prefix(&b.log, "absence") == sees[ib][ia]);
            CHECK(log_count_prefix(&a.log, "absence") == 0);
            if (mode == 0) CHECK(a.nret == 1 && a.ret[0] == 0);
            if (mode == 1) CHECK(a.nret == 1 && a.ret[0] == 0);
            /* A is gone after quit/crash, alive after a delete (it has ctl) */
            CHECK(mk_vm_nprocs(vm) == (mode == 0 ? 2u : 1u));
            CHECK(a.destroyed == (mode == 0 ? 0 : 1));
            mk_vm_free(vm, NULL);
            CHECK(a.destroyed == 1 && b.destroyed == 1);
            if (check_failed_now) {
              fprintf(stderr, "  combo: A %s/%s, B %s/%s, %s first, removal %d\n",
                      ori((mk_orientation)oa), intr((mk_interest)ia), ori(ob),
                      intr((mk_interest)ib), order ? "B" : "A", mode);
              log_dump(&a.log, "A");
              log_dump(&b.log, "B");
            }
            check_failed_now |= before;
            rec_done(&a);
            rec_done(&b);
          }
  CHECK(combos == 108);
  END;
}

static void test_presence_refined_topic(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b, c, d, e;
  mk_rtype *rt1;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_init(&c, "C");
  rec_init(&d, "D");
  rec_init(&e, "E");
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(W(), I(5)), 0);
  rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(3), W()), 0);
  rec_ep(&c, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(4), I(6)), 0);   /* no match */
  /* nested refinement */
  rec_ep(&d, "deep", MK_PUBLISHER, MK_PARTICIPANT, R(W(), R(W(), I(7))), 0);
  rec_ep(&e, "deep", MK_SUBSCRIBER, MK_PARTICIPANT, R(R(I(1), W()), R(I(2), W())), 0);
  spawn(vm, &a);
  spawn(vm, &b);
  spawn(vm, &c);
  spawn(vm, &d);
  spawn(vm, &e);
  mk_vm_run(vm);
  CHECK(log_count(&a.log, "presence ep subscriber/participant rec(3, 5)") == 1);
  CHECK(log_count(&b.log, "presence ep publisher/participant rec(3, 5)") == 1);
  CHECK(log_count_prefix(&c.log, "presence") == 0);
  CHECK(log_count(&d.log, "presence deep subscriber/participant rec(rec(1, _), rec(2, 7))") == 1);
  CHECK(log_count(&e.log, "presence deep publisher/participant rec(rec(1, _), rec(2, 7))") == 1);
  /* different arity or label never intersects */
  rt1 = mk_rtype_get("rec", 3, 1, NULL);
  {
    rec f;
    rec_init(&f, "F");
    rec_ep(&f, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(rt1, W()), 0);
    spawn(vm, &f);
    mk_vm_run(vm);
    CHECK(log_count_prefix(&f.log, "presence") == 0);
    CHECK(log_count(&a.log, "presence ep subscriber/participant rec(3, 5)") == 1);
    CHECK(a.log.n == 2);
    mk_vm_free(vm, NULL);
    rec_done(&f);
  }
  mk_rtype_unref(rt1);
  rec_done(&a); rec_done(&b); rec_done(&c); rec_done(&d); rec_done(&e);
  END;
}

/* Keeps (a reference to) the topic of its first presence event in r->ud. */
static void keep_topic_script(mk_proc *p, const mk_event *ev, rec *r) {
  (void)p;
  if (ev->type == MK_EV_PRESENCE && r->ud == NULL) r->ud = mk_ref(ev->role.topic);
}

/* Both ends of a pair are told of one intersection, made once: the two
** presence events share the term. */
static void test_presence_shared_intersection(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(W(), I(5)), 0);
  rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(3), W()), 0);
  a.fn = b.fn = keep_topic_script;
  spawn(vm, &a);
  spawn(vm, &b);
  mk_vm_run(vm);
  CHECK(log_count(&a.log, "presence ep subscriber/participant rec(3, 5)") == 1);
  CHECK(log_count(&b.log, "presence ep publisher/participant rec(3, 5)") == 1);
  CHECK(a.ud != NULL && a.ud == b.ud);
  mk_unref(a.ud);
  mk_unref(b.ud);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  rec_done(&b);
  END;
}

static void test_absence_refined_and_reason(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b;
  mk_term *why = mk_cstr("shutdown");
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(W(), I(5)), 0);
  rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(3), W()), 0);
  spawn(vm, &a);
  spawn(vm, &b);
  mk_vm_run(vm);
  CHECK(mk_vm_kill(vm, b.pid, why) == 0);
  CHECK(mk_vm_kill(vm, 4242, why) == -1);
  mk_vm_run(vm);
  CHECK(log_count(&a.log, "absence ep subscriber/participant rec(3, 5) \"shutdown\"") == 1);
  CHECK(b.destroyed == 1);
  mk_vm_free(vm, NULL);
  mk_unref(why);
  rec_done(&a);
  rec_done(&b);
  END;
}

static void test_edges_not_counts(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec p, s1, s2, s3;
  rec_init(&p, "P");
  rec_init(&s1, "S1");
  rec_init(&s2, "S2");
  rec_init(&s3, "S3");
  rec_ep(&p, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&s1, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), I(3)), 0);
  rec_ep(&s2, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), I(3)), 0);
  /* one process, two identical endpoints: still two edges */
  rec_ep(&s3, "x", MK_SUBSCRIBER, MK_PARTICIPANT, R(W(), I(3)), 0);
  rec_ep(&s3, "y", MK_SUBSCRIBER, MK_PARTICIPANT, R(W(), I(3)), 0);
  spawn(vm, &p);
  spawn(vm, &s1);
  spawn(vm, &s2);
  spawn(vm, &s3);
  mk_vm_run(vm);
  CHECK(log_count(&p.log, "presence ep subscriber/participant rec(1, 3)") == 4);
  CHECK(log_count(&s3.log, "presence x publisher/participant rec(1, 3)") == 1);
  CHECK(log_count(&s3.log, "presence y publisher/participant rec(1, 3)") == 1);
  /* a second publisher: every subscriber endpoint gets one more presence */
  {
    rec q;
    rec_init(&q, "Q");
    rec_ep(&q, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(W(), W()), 0);
    spawn(vm, &q);
    mk_vm_run(vm);
    CHECK(log_count_prefix(&q.log, "presence ep subscriber/participant") == 4);
    CHECK(log_count_prefix(&s1.log, "presence") == 2);
    CHECK(log_count_prefix(&s3.log, "presence") == 4);
    /* S3 quits: P hears two absences, one per edge */
    CHECK(mk_vm_kill(vm, s3.pid, NULL) == 0);
    mk_vm_run(vm);
    CHECK(log_count(&p.log, "absence ep subscriber/participant rec(1, 3) nil") == 2);
    CHECK(log_count(&q.log, "absence ep subscriber/participant rec(_, 3) nil") == 2);
    CHECK(log_count_prefix(&s1.log, "absence") == 0);
    mk_vm_free(vm, NULL);
    rec_done(&q);
  }
  rec_done(&p); rec_done(&s1); rec_done(&s2); rec_done(&s3);
  END;
}

static void same_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  if (r->mode == 0) {
    t = R(I(1), I(2));
    mk_send(p, t);
    mk_unref(t);
    r->mode = 1;
  } else {
    rec_ret(r, mk_delete_endpoint(p, "p", 0, NULL));
    rec_ret(r, mk_delete_endpoint(p, "nosuch", 0, NULL));
  }
}

static void test_same_process_endpoints(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a;
  rec_init(&a, "A");
  rec_ep(&a, "p", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&a, "s", MK_SUBSCRIBER, MK_PARTICIPANT, R(W(), I(2)), 0);
  rec_ctl(&a);
  a.fn = same_script;
  spawn(vm, &a);
  mk_vm_run(vm);
  CHECK(log_count(&a.log, "presence p subscriber/participant rec(1, 2)") == 1);
  CHECK(log_count(&a.log, "presence s publisher/participant rec(1, 2)") == 1);
  CHECK(log_count_prefix(&a.log, "presence") == 2);
  poke(vm, "A");
  mk_vm_run(vm);
  CHECK(log_count(&a.log, "message s rec(1, 2)") == 1);
  CHECK(log_count_prefix(&a.log, "message p") == 0);
  poke(vm, "A");
  mk_vm_run(vm);
  CHECK(a.nret == 2 && a.ret[0] == 0 && a.ret[1] == -1);
  CHECK(log_count(&a.log, "absence s publisher/participant rec(1, 2) nil") == 1);
  CHECK(log_count_prefix(&a.log, "absence p") == 0);
  mk_vm_free(vm, NULL);
  CHECK(a.destroyed == 1);
  rec_done(&a);
  END;
}

/* ---- messages ------------------------------------------------------------ */

static void sender_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  t = R(I(7), I(1));
  if (r->mode == 0) mk_send(p, t); else mk_feedback(p, t);
  mk_unref(t);
}

static void test_send_and_feedback(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec x, s1, s2, s3, s4, p1, p2;
  rec *all[] = {&x, &s1, &s2, &s3, &s4, &p1, &p2};
  size_t i;
  rec_init(&x, "X");
  rec_init(&s1, "S1");
  rec_init(&s2, "S2");
  rec_init(&s3, "S3");
  rec_init(&s4, "S4");
  rec_init(&p1, "P1");
  rec_init(&p2, "P2");
  rec_ep(&x, "own", MK_SUBSCRIBER, MK_PARTICIPANT, R(W(), I(1)), 0);
  rec_ep(&x, "out", MK_PUBLISHER, MK_PARTICIPANT, R(I(7), W()), 0);
  rec_ctl(&x);
  x.fn = sender_script;
  rec_ep(&s1, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(7), W()), 0);
  rec_ep(&s2, "in", MK_SUBSCRIBER, MK_OBSERVER, R(W(), I(1)), 0);
  rec_ep(&s3, "in", MK_SUBSCRIBER, MK_EVERYTHING, R(W(), W()), 0);
  rec_ep(&s4, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(8), W()), 0);   /* no match */
  rec_ep(&p1, "out", MK_PUBLISHER, MK_PARTICIPANT, R(I(7), I(1)), 0);
  rec_ep(&p2, "out", MK_PUBLISHER, MK_OBSERVER, R(I(7), I(2)), 0);     /* no match */
  for (i = 0; i < sizeof all / sizeof *all; i++) spawn(vm, all[i]);
  mk_vm_run(vm);
  /* send: every matching subscriber, the sender's own included */
  poke(vm, "X");
  mk_vm_run(vm);
  CHECK(log_count(&x.log, "message own rec(7, 1)") == 1);
  CHECK(log_count(&s1.log, "message in rec(7, 1)") == 1);
  CHECK(log_count(&s2.log, "message in rec(7, 1)") == 1);
  CHECK(strcmp(s2.msgrole, "subscriber/observer rec(_, 1)") == 0);
  CHECK(log_count(&s3.log, "message in rec(7, 1)") == 1);
  CHECK(strcmp(s3.msgrole, "subscriber/everything rec(_, _)") == 0);
  CHECK(log_count_prefix(&s4.log, "message") == 0);
  CHECK(log_count_prefix(&p1.log, "message") == 0);
  CHECK(log_count_prefix(&x.log, "message out") == 0);
  /* feedback: every matching publisher, the sender's own included */
  x.mode = 1;
  poke(vm, "X");
  mk_vm_run(vm);
  CHECK(log_count(&x.log, "message out rec(7, 1)") == 1);
  CHECK(strcmp(x.msgrole, "publisher/participant rec(7, _)") == 0);
  CHECK(log_count(&p1.log, "message out rec(7, 1)") == 1);
  CHECK(log_count_prefix(&p2.log, "message") == 0);
  CHECK(log_count(&x.log, "message own rec(7, 1)") == 1);
  CHECK(log_count_prefix(&s1.log, "message") == 1);
  CHECK(log_count_prefix(&s3.log, "message") == 1);
  /* from outside any process */
  {
    mk_term *t = R(I(7), I(9));
    mk_vm_send(vm, t, 0);
    mk_vm_send(vm, t, 1);
    mk_unref(t);
  }
  mk_vm_run(vm);
  CHECK(log_count(&s1.log, "message in rec(7, 9)") == 1);
  CHECK(log_count(&x.log, "message out rec(7, 9)") == 1);
  CHECK(log_count_prefix(&p1.log, "message") == 1);
  mk_vm_free(vm, NULL);
  for (i = 0; i < sizeof all / sizeof *all; i++) {
    CHECK(all[i]->destroyed == 1);
    rec_done(all[i]);
  }
  END;
}

/* Endpoint tags: set after adding, handed back in the endpoint's events. */
static void tag_script(mk_proc *p, const mk_event *ev, rec *r) {
  char line[96];
  if (ev->type == MK_EV_BOOT) {
    rec_ret(r, mk_tag_endpoint(p, "in", 42));
    rec_ret(r, mk_tag_endpoint(p, "nope", 1));
  } else if (ev->type == MK_EV_MESSAGE || ev->type == MK_EV_PRESENCE) {
    snprintf(line, sizeof line, "%s %s tag %u",
             ev->type == MK_EV_MESSAGE ? "message" : "presence", ev->endpoint,
             (unsigned)ev->tag);
    log_add(&r->log, line);
  }
}

static void test_endpoint_tags(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b;
  mk_term *t;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(7), W()), 0);
  rec_ep(&a, "plain", MK_SUBSCRIBER, MK_PARTICIPANT, R(W(), I(1)), 0);
  a.fn = tag_script;
  rec_ep(&b, "out", MK_PUBLISHER, MK_PARTICIPANT, R(I(7), I(1)), 0);
  spawn(vm, &a);
  spawn(vm, &b);
  mk_vm_run(vm);
  t = R(I(7), I(1));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(a.nret == 2 && a.ret[0] == 0 && a.ret[1] == -1);
  CHECK(log_count(&a.log, "presence in tag 42") == 1);
  CHECK(log_count(&a.log, "presence plain tag 0") == 1);
  CHECK(log_count(&a.log, "message in tag 42") == 1);
  CHECK(log_count(&a.log, "message plain tag 0") == 1);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  rec_done(&b);
  END;
}

enum { MANY_EPS = 4000 };

/* Adds MANY_EPS subscriber endpoints, all on the topic r->ud, or when it
** is NULL each on an alarm of its own, so far in the future that none
** goes off while a test runs. */
static void many_script(mk_proc *p, const mk_event *ev, rec *r) {
  int i;
  char name[16];
  if (ev->type != MK_EV_MESSAGE) return;
  for (i = 0; i < MANY_EPS; i++) {
    mk_term *t = r->ud ? mk_ref(r->ud)
                       : mk_rec(mk_ground_monotonic_alarm, mk_int(4000000000000LL + i));
    snprintf(name, sizeof name, "e%d", i);
    mk_add_endpoint(p, name, 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, t));
    mk_unref(t);
  }
}

/* An endpoint record with a short name filled a 96-byte malloc chunk, not
** 112, and the name table holds one slot per two endpoints (issue 10: an
** idle connection holds about ten): here 4,000 of them on one topic, whose
** leaf they share.  101 bytes each, of which the table 4; 121 before.  A
** subscriber's is now placed with its hot fields on one cache line (vm.c,
** xline), two lines of the pool's: 133 bytes each. */
static void test_endpoint_footprint(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a;
  size_t before, after;
  rec_init(&a, "A");
  rec_ctl(&a);
  a.fn = many_script;
  a.ud = R(I(1), I(2));
  spawn(vm, &a);
  mk_vm_run(vm);
  before = heap_in_use();
  poke(vm, "A");
  mk_vm_run(vm);
  after = heap_in_use();
  if (HEAP_COUNTED) CHECK((after - before) / MANY_EPS <= 128 + 6);
  mk_vm_send(vm, a.ud, 0);              /* and every one is there */
  mk_vm_run(vm);
  CHECK(log_count_prefix(&a.log, "message e") == MANY_EPS);
  mk_vm_free(vm, NULL);
  mk_unref(a.ud);
  rec_done(&a);
  END;
}

/* A process that adds one endpoint on a shared topic at boot and then
** sits idle, with no data of its own. */
static mk_term *idle_topic;
static void idle_handle(mk_proc *p, const mk_event *ev) {
  if (ev->type == MK_EV_BOOT)
    mk_add_endpoint(p, "in", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, idle_topic));
}
static const mk_behavior idle_behavior = { "idle", idle_handle, NULL, NULL, NULL, 0, NULL, NULL };

/* What the VM keeps per idle process with one endpoint: its record, in an
** 80-byte malloc chunk (96 while it held its name, meta names and endpoint
** count itself), the endpoint's 96, and their share of the pid and name
** tables: 205 bytes before, 189 after (issue 10: a million idle
** processes).  Placed on cache lines (vm.c, xline), the record and the
** subscriber endpoint take two lines each: 269. */
static void test_process_footprint(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  size_t before, after;
  int i;
  idle_topic = R(I(3), I(4));
  before = heap_in_use();
  for (i = 0; i < MANY_EPS; i++) mk_vm_spawn(vm, &idle_behavior, NULL, NULL);
  mk_vm_run(vm);
  after = heap_in_use();
  if (HEAP_COUNTED) CHECK((after - before) / MANY_EPS <= 270);
  CHECK(mk_vm_nprocs(vm) == MANY_EPS);
  mk_vm_free(vm, NULL);
  mk_unref(idle_topic);
  END;
}

/* A wave of exits gives the records of its processes (the process, its
** endpoint and the trie leaf of its topic) to the small-block cache, and
** the next wave of spawns takes them from there, not from malloc
** (runtime/pool.h: a VM spawning and killing in waves ran at less than
** half its first wave's rate on glibc's free lists). */
static void test_records_reused(void) {
  enum { N = 3000 };
  static mk_pid pids[N];
  BEGIN;
  mk_vm *vm = mk_vm_new();
  size_t before, freed;
  int i;
  idle_topic = R(I(5), I(6));
  for (i = 0; i < N; i++) pids[i] = mk_vm_spawn(vm, &idle_behavior, NULL, NULL);
  mk_vm_run(vm);
  before = mk_pool_cached();
  for (i = 0; i < N; i++) CHECK(mk_vm_kill(vm, pids[i], NULL) == 0);
  mk_vm_run(vm);
  freed = mk_pool_cached() - before;
  if (!MK_SANITIZED) CHECK(freed >= (size_t)N * (72 + 88));
  for (i = 0; i < N; i++) pids[i] = mk_vm_spawn(vm, &idle_behavior, NULL, NULL);
  mk_vm_run(vm);
  if (!MK_SANITIZED) CHECK(mk_pool_cached() <= before + 1024);
  CHECK(mk_vm_nprocs(vm) == N);
  mk_vm_free(vm, NULL);
  mk_unref(idle_topic);
  END;
}

/* The pid table finds every live process and no dead one, through its
** growth and with processes killed out of order (vm.c, pidslot: a
** process's chain is its pid). */
static void test_pid_table(void) {
  enum { N = 5000 };
  static mk_pid pids[2 * N];
  BEGIN;
  mk_vm *vm = mk_vm_new();
  int i, ok = 1;
  idle_topic = R(I(3), I(4));
  for (i = 0; i < N; i++) pids[i] = mk_vm_spawn(vm, &idle_behavior, NULL, NULL);
  mk_vm_run(vm);
  for (i = 0; i < N; i += 3) CHECK(mk_vm_kill(vm, pids[i], NULL) == 0);
  mk_vm_run(vm);
  for (i = N; i < 2 * N; i++) pids[i] = mk_vm_spawn(vm, &idle_behavior, NULL, NULL);
  mk_vm_run(vm);
  for (i = 2 * N - 1; i >= N; i -= 2) CHECK(mk_vm_kill(vm, pids[i], NULL) == 0);
  mk_vm_run(vm);
  for (i = 0; i < 2 * N; i++) {
    int dead = i < N ? i % 3 == 0 : (2 * N - 1 - i) % 2 == 0;
    mk_proc *p = mk_vm_proc(vm, pids[i]);
    if (dead ? p != NULL : p == NULL || mk_proc_pid(p) != pids[i]) ok = 0;
  }
  CHECK(ok);
  CHECK(mk_vm_nprocs(vm) == (size_t)(N - (N + 2) / 3 + N / 2));
  CHECK(mk_vm_proc(vm, pids[2 * N - 1] + 1) == NULL);
  mk_vm_free(vm, NULL);
  mk_unref(idle_topic);
  END;
}

/* Processes that outlive thousands of others share chains of the pid
** table with the newer ones (pids wrap around a small table many times
** over).  Random spawns and kills, every live process found and no dead
** one after each. */
static void test_pid_table_shared_slots(void) {
  enum { KEEP = 40, MAXLIVE = 200, ROUNDS = 3000 };
  static mk_pid live[KEEP + MAXLIVE], gone[ROUNDS];
  BEGIN;
  mk_vm *vm = mk_vm_new();
  unsigned seed = 12345;
  int nlive = 0, ngone = 0, r, i, ok = 1;
  idle_topic = R(I(3), I(4));
  for (i = 0; i < KEEP; i++) live[nlive++] = mk_vm_spawn(vm, &idle_behavior, NULL, NULL);
  for (r = 0; r < ROUNDS; r++) {
    int spawns = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 5;
    for (i = 0; i < spawns && nlive < KEEP + MAXLIVE; i++)
      live[nlive++] = mk_vm_spawn(vm, &idle_behavior, NULL, NULL);
    if (nlive > KEEP) {               /* one of the newer ones, at random */
      int k = KEEP + (int)((seed = seed * 1103515245u + 12345u) >> 16) % (nlive - KEEP);
      if (mk_vm_kill(vm, live[k], NULL) != 0) ok = 0;
      gone[ngone++] = live[k];
      live[k] = live[--nlive];
    }
    mk_vm_run(vm);
    for (i = 0; i < nlive; i++) {
      mk_proc *p = mk_vm_proc(vm, live[i]);
      if (p == NULL || mk_proc_pid(p) != live[i]) ok = 0;
    }
    if (ngone > 0 && mk_vm_proc(vm, gone[ngone - 1]) != NULL) ok = 0;
    if (mk_vm_nprocs(vm) != (size_t)nlive) ok = 0;
  }
  for (i = 0; i < ngone; i++) if (mk_vm_proc(vm, gone[i]) != NULL) ok = 0;
  CHECK(ok);
  CHECK(live[KEEP - 1] + 2000 < gone[ngone - 1]);   /* the pids went round */
  mk_vm_free(vm, NULL);
  mk_unref(idle_topic);
  END;
}

/* A behaviour that declines messages to endpoints tagged 7. */
static int declines_calls;
static int decline7(mk_proc *p, uint32_t tag, mk_event_type type) {
  (void)p;
  declines_calls++;
  return tag == 7 && type == MK_EV_MESSAGE;
}
static const mk_behavior declining = { "declining", rec_handle, rec_release, rec_destroy,
                                       decline7, 0, NULL, NULL };

static void tag7_script(mk_proc *p, const mk_event *ev, rec *r) {
  if (ev->type == MK_EV_BOOT) mk_tag_endpoint(p, "in", 7);
}

static void test_declined_events(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a;
  mk_term *t = R(I(7), I(1));
  rec_init(&a, "A");
  rec_ep(&a, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(7), W()), 0);
  rec_ctl(&a);
  a.fn = tag7_script;
  mk_vm_spawn(vm, &declining, &a, "A");
  mk_vm_run(vm);
  declines_calls = 0;
  mk_vm_send(vm, t, 0);                  /* A idle, nothing queued: declined */
  mk_vm_run(vm);
  CHECK(declines_calls == 1);
  CHECK(log_count(&a.log, "message in rec(7, 1)") == 0);
  poke(vm, "A");                         /* queued first: the next is not asked */
  mk_vm_send(vm, t, 0);
  mk_vm_run(vm);
  CHECK(declines_calls == 2);            /* asked about the poke (untagged) only */
  CHECK(log_count(&a.log, "message in rec(7, 1)") == 1);
  mk_unref(t);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  END;
}

/* At boot, A (tagged 7 on "in", declining those messages) sends itself
** rec(7, 1), then a poke, then rec(7, 2): all queued while it runs. */
static void self_sends(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  int64_t i;
  if (ev->type != MK_EV_BOOT) return;
  mk_tag_endpoint(p, "in", 7);
  for (i = 1; i <= 2; i++) {
    if (i == 2) {
      t = Ctl(r->tag);
      mk_send(p, t);
      mk_unref(t);
    }
    t = R(I(7), I(i));
    mk_send(p, t);
    mk_unref(t);
  }
}

/* Events a process queued for itself while it ran, and declines once it
** has returned, are dropped then, up to the first it does not decline. */
static void test_declined_at_activation_end(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a;
  rec_init(&a, "A");
  rec_ep(&a, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(7), W()), 0);
  rec_ctl(&a);
  a.fn = self_sends;
  declines_calls = 0;
  mk_vm_spawn(vm, &declining, &a, "A");
  mk_vm_run(vm);
  CHECK(declines_calls == 2);            /* rec(7, 1), then the poke: not past it */
  CHECK(log_count(&a.log, "message in rec(7, 1)") == 0);
  CHECK(log_find(&a.log, "message ctl ctl(\"A\")") == 1);
  CHECK(log_find(&a.log, "message in rec(7, 2)") == 2);
  CHECK(a.log.n == 3);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  END;
}

/* A process that handles the events queued right behind its own in the
** same call (mk_proc_next, mk_proc_take), logging each. */
static int batch_calls;
static void batch_handle(mk_proc *p, const mk_event *ev) {
  mk_event next;
  batch_calls++;
  rec_handle(p, ev);
  while (mk_proc_next(p, &next)) {
    rec_handle(p, &next);
    mk_proc_take(p);
  }
}
static const mk_behavior batching = { "batching", batch_handle, rec_release, rec_destroy,
                                      NULL, 0, NULL, NULL };

static void send_to(mk_vm *vm, int64_t who, int64_t n) {
  mk_term *t = R(I(who), I(n));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
}

/* mk_proc_next shows only the head of the queue, and only when it is the
** process's message, presence or absence for a live endpoint of its own. */
static void test_proc_next(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b, o, e;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_init(&o, "O");
  rec_init(&e, "E");
  rec_ep(&a, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&b, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(2), W()), 0);
  mk_vm_spawn(vm, &batching, &a, "A");
  spawn(vm, &b);
  mk_vm_run(vm);
  batch_calls = 0;
  send_to(vm, 1, 1);
  send_to(vm, 1, 2);
  send_to(vm, 2, 1);
  send_to(vm, 1, 3);
  mk_vm_run(vm);
  CHECK(batch_calls == 2);               /* A 1 and 2 in one call, then A 3 */
  CHECK(log_find(&glog, "A: message in rec(1, 1)") == 2);   /* after the boots */
  CHECK(log_find(&glog, "A: message in rec(1, 2)") == 3);
  CHECK(log_find(&glog, "B: message in rec(2, 1)") == 4);
  CHECK(log_find(&glog, "A: message in rec(1, 3)") == 5);
  CHECK(glog.n == 6);
  /* An observer hears of two endpoints of a publisher that comes, then
  ** goes: each pair in one call. */
  rec_ep(&o, "in", MK_SUBSCRIBER, MK_OBSERVER, R(I(3), W()), 0);
  rec_ep(&e, "x", MK_PUBLISHER, MK_PARTICIPANT, R(I(3), I(1)), 0);
  rec_ep(&e, "y", MK_PUBLISHER, MK_PARTICIPANT, R(I(3), I(2)), 0);
  mk_vm_spawn(vm, &batching, &o, "O");
  mk_vm_run(vm);
  batch_calls = 0;
  spawn(vm, &e);
  mk_vm_run(vm);
  CHECK(batch_calls == 1);
  CHECK(log_find(&o.log, "presence in publisher/participant rec(3, 1)") == 1);
  CHECK(log_find(&o.log, "presence in publisher/participant rec(3, 2)") == 2);
  mk_vm_kill(vm, e.pid, NULL);
  mk_vm_run(vm);
  CHECK(batch_calls == 2);
  CHECK(log_find(&o.log, "absence in publisher/participant rec(3, 2) nil") == 3);   /* last added first */
  CHECK(log_find(&o.log, "absence in publisher/participant rec(3, 1) nil") == 4);
  CHECK(o.log.n == 5);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  rec_done(&b);
  rec_done(&o);
  rec_done(&e);
  END;
}

/* mk_behavior.prefetch, recorded: "A0 B0 A1 ..." (tag and stage). */
static char pflog[1024];
static void pf_hook(const mk_proc *p, int stage) {
  const rec *r = mk_proc_data(p);
  size_t n = strlen(pflog);
  snprintf(pflog + n, sizeof pflog - n, "%s%s%d", n ? " " : "", r->tag, stage);
}
static const mk_behavior prefetching = { "prefetching", rec_handle, rec_release, rec_destroy,
                                         NULL, 0, NULL, pf_hook };

/* What stages over these tags, in mk_vm_prefetch's order, should log. */
static const char *pfwant(const char *const *tags, int n, int stages) {
  static char want[1024];
  int k, i;
  want[0] = '\0';
  for (k = 0; k < stages; k++)
    for (i = 0; i < n; i++) {
      size_t len = strlen(want);
      snprintf(want + len, sizeof want - len, "%s%s%d", len ? " " : "", tags[i], k);
    }
  return want;
}

/* mk_vm_prefetch calls each queued event's process stage by stage across
** the first `max` events, and changes nothing; mk_prefetch_receivers
** follows a slot to its receivers' own stages, two behind, while the
** slot is current. */
static void test_prefetch(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b;
  mk_match_slot slot;
  mk_term *t;
  mk_proc *pa, *pb;
  static const char *const ab[] = { "A", "B" }, *const aba[] = { "A", "B", "A" };
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&b, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(2), W()), 0);
  mk_vm_spawn(vm, &prefetching, &a, "A");
  mk_vm_spawn(vm, &prefetching, &b, "B");
  mk_vm_run(vm);
  pa = mk_vm_proc(vm, a.pid);
  pb = mk_vm_proc(vm, b.pid);
  CHECK(pa != NULL && pb != NULL);
  send_to(vm, 1, 1);
  send_to(vm, 2, 1);
  send_to(vm, 1, 2);
  pflog[0] = '\0';
  mk_vm_prefetch(vm, 2);
  CHECK(strcmp(pflog, pfwant(ab, 2, MK_PREFETCH_STAGES)) == 0);
  pflog[0] = '\0';
  mk_vm_prefetch(vm, 100);
  CHECK(strcmp(pflog, pfwant(aba, 3, MK_PREFETCH_STAGES)) == 0);
  mk_vm_run(vm);                         /* as if nothing had looked */
  CHECK(log_find(&a.log, "message in rec(1, 1)") == 1);
  CHECK(log_find(&a.log, "message in rec(1, 2)") == 2);
  CHECK(log_find(&b.log, "message in rec(2, 1)") == 1);
  CHECK(a.log.n == 3 && b.log.n == 2);
  pflog[0] = '\0';
  mk_vm_prefetch(vm, 100);               /* an empty queue */
  CHECK(pflog[0] == '\0');
  /* a slot: its receiver's stages from the slot's stage 2 */
  memset(&slot, 0, sizeof slot);
  t = R(I(1), I(5));
  mk_vm_send_slot(vm, t, 0, &slot);
  mk_vm_run(vm);
  pflog[0] = '\0';
  mk_prefetch_receivers(pb, &slot, 0);
  mk_prefetch_receivers(pb, &slot, 1);
  CHECK(pflog[0] == '\0');
  mk_prefetch_receivers(pb, &slot, 2);
  mk_prefetch_receivers(pb, &slot, 3);
  CHECK(strcmp(pflog, "A0 A1") == 0);
  /* once the receiver is gone the slot is voided: nothing is read */
  mk_vm_kill(vm, a.pid, NULL);
  mk_vm_run(vm);
  pflog[0] = '\0';
  mk_prefetch_receivers(pb, &slot, 0);
  mk_prefetch_receivers(pb, &slot, 2);
  CHECK(pflog[0] == '\0');
  mk_match_slot_clear(&slot);
  mk_unref(t);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  rec_done(&b);
  END;
}

static void send_at_boot(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (ev->type != MK_EV_BOOT) return;
  t = R(I(9), I(r->num));
  mk_send(p, t);
  mk_unref(t);
}

static void test_no_buffering(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec early, s, late;
  rec_init(&early, "early");
  rec_init(&s, "S");
  rec_init(&late, "late");
  early.fn = send_at_boot;
  early.num = 1;
  late.fn = send_at_boot;
  late.num = 2;
  rec_ep(&s, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(9), W()), 0);
  spawn(vm, &early);
  mk_vm_run(vm);
  CHECK(early.destroyed == 1);    /* no endpoints: it has finished */
  spawn(vm, &s);
  mk_vm_run(vm);
  CHECK(log_count_prefix(&s.log, "message") == 0);
  /* sending needs no endpoint of one's own */
  spawn(vm, &late);
  mk_vm_run(vm);
  CHECK(log_count(&s.log, "message in rec(9, 2)") == 1);
  CHECK(log_count_prefix(&s.log, "message") == 1);
  CHECK(late.destroyed == 1);
  mk_vm_free(vm, NULL);
  rec_done(&early); rec_done(&s); rec_done(&late);
  END;
}

static void test_wildcard_in_message(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b, c, d;
  mk_term *t;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_init(&c, "C");
  rec_init(&d, "D");
  rec_ep(&a, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(3), W()), 0);
  rec_ep(&b, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(4), I(5)), 0);
  rec_ep(&c, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(4), I(6)), 0);
  rec_ep(&d, "in", MK_PUBLISHER, MK_PARTICIPANT, R(I(4), I(5)), 0);
  spawn(vm, &a); spawn(vm, &b); spawn(vm, &c); spawn(vm, &d);
  mk_vm_run(vm);
  t = R(W(), I(5));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  t = W();
  mk_vm_send(vm, t, 1);   /* a bare wildcard as feedback: every publisher */
  mk_vm_run(vm);
  CHECK(log_count(&a.log, "message in rec(_, 5)") == 1);
  CHECK(log_count(&b.log, "message in rec(_, 5)") == 1);
  CHECK(log_count_prefix(&c.log, "message") == 0);
  CHECK(log_count(&d.log, "message in _") == 1);
  CHECK(log_count_prefix(&d.log, "message") == 1);
  mk_vm_free(vm, NULL);
  rec_done(&a); rec_done(&b); rec_done(&c); rec_done(&d);
  END;
}

/* ---- re-adding ----------------------------------------------------------- */

static void readd_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  if (r->mode == 0) {
    t = R(I(1), W());
    rec_ret(r, mk_add_endpoint(p, "ep", 0, role(MK_PUBLISHER, MK_PARTICIPANT, t)));
    mk_unref(t);
    rec_ret(r, (int)mk_proc_nendpoints(p));
  } else {
    t = R(I(1), W());
    /* same topic, other interest: a different role */
    rec_ret(r, mk_add_endpoint(p, "ep", 0, role(MK_PUBLISHER, MK_OBSERVER, t)));
    mk_unref(t);
    t = R(I(1), I(2));
    mk_send(p, t);      /* dead by now: dropped */
    mk_unref(t);
  }
}

static void test_readd_endpoint(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b;
  size_t na, nb;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ctl(&a);
  a.fn = readd_script;
  rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), I(2)), 0);
  spawn(vm, &a);
  spawn(vm, &b);
  mk_vm_run(vm);
  CHECK(log_count_prefix(&a.log, "presence") == 1);
  CHECK(log_count_prefix(&b.log, "presence") == 1);
  na = a.log.n;
  nb = b.log.n;
  /* equal role: 1, nothing happens */
  poke(vm, "A");
  mk_vm_run(vm);
  CHECK(a.nret == 2 && a.ret[0] == 1 && a.ret[1] == 2);
  CHECK(a.log.n == na + 1);           /* just the ctl message */
  CHECK(b.log.n == nb);
  CHECK(mk_vm_nprocs(vm) == 2);
  /* different role: the process dies, B sees why */
  a.mode = 1;
  poke(vm, "A");
  mk_vm_run(vm);
  CHECK(a.nret == 3 && a.ret[2] == -1);
  CHECK(a.destroyed == 1);
  CHECK(mk_vm_proc(vm, a.pid) == NULL);
  CHECK(mk_vm_nprocs(vm) == 1);
  CHECK(log_count_prefix(&b.log, "absence ep publisher/participant rec(1, 2) \"") == 1);
  CHECK(b.log.n > 0 && strstr(b.log.v[b.log.n - 1], "'ep'") != NULL);
  CHECK(log_count_prefix(&b.log, "message") == 0);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  rec_done(&b);
  END;
}

/* ---- quit ---------------------------------------------------------------- */

static void quit_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  rec *child = r->ud;
  if (!is_ctl(ev)) return;
  rec_ret(r, mk_quit(p, 0, NULL));
  t = R(I(5), I(5));
  mk_send(p, t);
  mk_feedback(p, t);
  mk_unref(t);
  t = R(I(5), W());
  rec_ret(r, mk_add_endpoint(p, "more", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, t)));
  mk_unref(t);
  rec_ret(r, (int)mk_spawn(p, &recb, child, "child", "k"));
  mk_yield(p, "y");
  rec_ret(r, mk_quit(p, 0, NULL));
  t = R(I(5), I(5));
  rec_ret(r, mk_at_meta_level(p, mk_action_send(t)));
  mk_unref(t);
}

static void test_quit_drops_rest(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b, c;
  mk_term *t;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_init(&c, "C");
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(5), W()), 0);
  rec_ctl(&a);
  a.fn = quit_script;
  a.ud = &c;
  rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(5), W()), 0);
  spawn(vm, &a);
  spawn(vm, &b);
  mk_vm_run(vm);
  poke(vm, "A");
  mk_vm_run(vm);
  CHECK(a.nret == 5);
  CHECK(a.ret[0] == 0);       /* the quit */
  CHECK(a.ret[1] == -1);      /* add after quit */
  CHECK(a.ret[2] == 0);       /* spawn after quit: pid 0 */
  CHECK(a.ret[3] == -1);      /* second quit */
  CHECK(a.ret[4] == -1);      /* at_meta_level */
  CHECK(c.boots == 0 && c.destroyed == 1);   /* spawn data released */
  CHECK(a.released == 2);     /* the spawn and yield tokens */
  CHECK(log_count_prefix(&b.log, "message") == 0);
  CHECK(log_count(&b.log, "absence ep publisher/participant rec(5, _) nil") == 1);
  CHECK(mk_vm_nprocs(vm) == 1);
  CHECK(a.destroyed == 1);
  /* B's endpoint still works */
  t = R(I(5), I(6));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(log_count(&b.log, "message ep rec(5, 6)") == 1);
  mk_vm_free(vm, NULL);
  rec_done(&a); rec_done(&b); rec_done(&c);
  END;
}

static void killer_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  t = mk_cstr("killed");
  rec_ret(r, mk_quit(p, 4242, t));
  rec_ret(r, mk_quit(p, *(mk_pid *)r->ud, t));
  mk_unref(t);
  t = R(I(6), I(1));
  mk_send(p, t);     /* the killer carries on */
  mk_unref(t);
}

static void test_quit_other_pid(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec k, v, t3;
  mk_pid vpid;
  rec_init(&k, "K");
  rec_init(&v, "V");
  rec_init(&t3, "T");
  rec_ep(&k, "watch", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(6), W()), 0);
  rec_ctl(&k);
  k.fn = killer_script;
  k.ud = &vpid;
  rec_ep(&v, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(6), I(1)), 0);
  rec_ep(&v, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(6), W()), 0);
  rec_ep(&t3, "watch", MK_SUBSCRIBER, MK_OBSERVER, R(W(), I(1)), 0);
  spawn(vm, &k);
  vpid = spawn(vm, &v);
  spawn(vm, &t3);
  mk_vm_run(vm);
  CHECK(log_count(&k.log, "presence watch publisher/participant rec(6, 1)") == 1);
  CHECK(log_count(&t3.log, "presence watch publisher/participant rec(6, 1)") == 1);
  poke(vm, "K");
  mk_vm_run(vm);
  CHECK(k.nret == 2 && k.ret[0] == -1 && k.ret[1] == 0);
  CHECK(v.destroyed == 1);
  CHECK(log_count_prefix(&v.log, "message") == 0);   /* dead before the send */
  CHECK(log_count(&k.log, "absence watch publisher/participant rec(6, 1) \"killed\"") == 1);
  CHECK(log_count(&t3.log, "absence watch publisher/participant rec(6, 1) \"killed\"") == 1);
  CHECK(log_count(&k.log, "message watch rec(6, 1)") == 1);
  CHECK(mk_vm_nprocs(vm) == 2);
  mk_vm_free(vm, NULL);
  rec_done(&k); rec_done(&v); rec_done(&t3);
  END;
}

/* ---- implicit exit, spawn, yield, order --------------------------------- */

static void yield_at_boot(mk_proc *p, const mk_event *ev, rec *r) {
  if (ev->type == MK_EV_BOOT) mk_yield(p, "y");
}

static void delete_on_message(mk_proc *p, const mk_event *ev, rec *r) {
  if (ev->type == MK_EV_MESSAGE) rec_ret(r, mk_delete_endpoint(p, "in", 0, NULL));
}

static void spawn_at_boot(mk_proc *p, const mk_event *ev, rec *r) {
  if (ev->type == MK_EV_BOOT) rec_ret(r, (int)mk_spawn(p, &recb, r->ud, "child", "k1"));
}

static void test_implicit_exit(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, y, d, s, c;
  mk_term *t;
  rec_init(&a, "A");
  rec_init(&y, "Y");
  rec_init(&d, "D");
  rec_init(&s, "S");
  rec_init(&c, "C");
  /* nothing at all */
  spawn(vm, &a);
  CHECK(mk_vm_nprocs(vm) == 1);
  mk_vm_run(vm);
  CHECK(mk_vm_nprocs(vm) == 0);
  CHECK(a.boots == 1 && a.destroyed == 1);
  /* a pending yield keeps it until resumed */
  y.fn = yield_at_boot;
  spawn(vm, &y);
  CHECK(mk_vm_step(vm) == 1);
  CHECK(mk_vm_proc(vm, y.pid) != NULL && y.destroyed == 0);
  mk_vm_run(vm);
  CHECK(log_count(&y.log, "resume y") == 1);
  CHECK(y.destroyed == 1 && mk_vm_nprocs(vm) == 0);
  /* endpoints keep it; deleting the last one ends it */
  rec_ep(&d, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(2), W()), 0);
  d.fn = delete_on_message;
  spawn(vm, &d);
  mk_vm_run(vm);
  CHECK(mk_vm_nprocs(vm) == 1 && d.destroyed == 0);
  t = R(I(2), I(2));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(d.nret == 1 && d.ret[0] == 0);
  CHECK(d.destroyed == 1 && mk_vm_nprocs(vm) == 0);
  /* a pending spawn continuation keeps it */
  s.fn = spawn_at_boot;
  s.ud = &c;
  spawn(vm, &s);
  CHECK(mk_vm_step(vm) == 1);                 /* S's boot */
  CHECK(mk_vm_nprocs(vm) == 2 && s.destroyed == 0);
  mk_vm_run(vm);
  CHECK(log_count(&s.log, "spawned k1") == 1);
  CHECK(s.destroyed == 1 && c.destroyed == 1 && mk_vm_nprocs(vm) == 0);
  mk_vm_free(vm, NULL);
  rec_done(&a); rec_done(&y); rec_done(&d); rec_done(&s); rec_done(&c);
  END;
}

static void test_spawn_continuation(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec parent, child;
  rec_init(&parent, "P");
  rec_init(&child, "C");
  rec_ep(&parent, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(8), W()), 0);
  parent.fn = spawn_at_boot;
  parent.ud = &child;
  rec_ep(&child, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(8), I(8)), 0);
  spawn(vm, &parent);
  mk_vm_run(vm);
  CHECK(parent.nret == 1 && parent.ret[0] != 0);
  CHECK(child.boots == 1);
  CHECK(parent.spawned == child.pid && (mk_pid)parent.ret[0] == child.pid);
  CHECK(child.pid != parent.pid);
  CHECK(log_count(&parent.log, "spawned k1") == 1);
  CHECK(mk_vm_proc(vm, child.pid) != NULL);
  CHECK(strcmp(mk_proc_name(mk_vm_proc(vm, child.pid)), "child") == 0);
  CHECK(log_count(&parent.log, "presence ep publisher/participant rec(8, 8)") == 1);
  /* the child boots before the continuation runs (both queued by the spawn) */
  CHECK(log_find(&glog, "C: boot") >= 0 &&
        log_find(&glog, "C: boot") < log_find(&glog, "P: spawned k1"));
  mk_vm_free(vm, NULL);
  CHECK(parent.released == 0);
  rec_done(&parent); rec_done(&child);
  END;
}

static void yield_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (ev->type != MK_EV_BOOT) return;
  t = R(I(4), I(1));
  mk_send(p, t);
  mk_unref(t);
  mk_yield(p, "y1");
  t = R(I(4), I(2));
  mk_send(p, t);
  mk_unref(t);
}

static void test_yield(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec y, s;
  int m1, m1y, r1, m2;
  rec_init(&y, "Y");
  rec_init(&s, "S");
  rec_ep(&s, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(4), W()), 0);
  rec_ep(&y, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(4), W()), 0);
  y.fn = yield_script;
  spawn(vm, &s);
  mk_vm_run(vm);
  spawn(vm, &y);
  mk_vm_run(vm);
  m1 = log_find(&glog, "S: message in rec(4, 1)");
  m1y = log_find(&glog, "Y: message in rec(4, 1)");
  r1 = log_find(&glog, "Y: resume y1");
  m2 = log_find(&glog, "S: message in rec(4, 2)");
  CHECK(m1 >= 0 && m1y >= 0 && r1 >= 0 && m2 >= 0);
  CHECK(m1 < r1 && m1y < r1);     /* what was queued before the yield runs first */
  CHECK(r1 < m2);                 /* what came after it, after */
  CHECK(y.released == 0);
  mk_vm_free(vm, NULL);
  rec_done(&y); rec_done(&s);
  END;
}

static void test_event_order(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec p, q;
  int i, ok = 1;
  mk_term *t;
  char want[64];
  rec_init(&p, "P");
  rec_init(&q, "Q");
  rec_ep(&p, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&q, "out", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), W()), 0);
  spawn(vm, &p);
  mk_vm_run(vm);
  t = R(I(1), I(0));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  spawn(vm, &q);   /* its presence is produced when it boots: after message 50 */
  for (i = 1; i <= 50; i++) {
    t = R(I(1), I(i));
    mk_vm_send(vm, t, 0);
    mk_unref(t);
  }
  mk_vm_run(vm);
  CHECK(p.log.n == 1 + 51 + 1);
  if (p.log.n == 53) {
    CHECK(strcmp(p.log.v[0], "boot") == 0);
    for (i = 0; i <= 50; i++) {
      snprintf(want, sizeof want, "message in rec(1, %d)", i);
      if (strcmp(p.log.v[1 + i], want) != 0) ok = 0;
    }
    CHECK(ok);
    CHECK(strcmp(p.log.v[52], "presence in publisher/participant rec(1, _)") == 0);
  }
  mk_vm_free(vm, NULL);
  rec_done(&p); rec_done(&q);
  END;
}

/* The queue is a list of blocks of MK_QBLOCK events (vmint.h).  P answers
** each rec(2, i) with rec(3, i), queued at the tail while the head block
** is being taken, for Q; a burst of 2,000 crosses blocks both ways. */
static void echo3_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  (void)r;
  if (ev->type != MK_EV_MESSAGE) return;
  t = R(I(3), mk_ref(mk_items(ev->message)[1]));
  mk_send(p, t);
  mk_unref(t);
}

static int quiet_count;
static void quiet_handle(mk_proc *p, const mk_event *ev) {
  if (ev->type == MK_EV_BOOT) mk_add_endpoint(p, "in", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, idle_topic));
  else if (ev->type == MK_EV_MESSAGE) quiet_count++;
}
static const mk_behavior quiet_behavior = { "quiet", quiet_handle, NULL, NULL, NULL, 0, NULL, NULL };

static int qblocks_count(const mk_qblock *b) {
  int n = 0;
  for (; b != NULL; b = b->next) n++;
  return n;
}

static void queue_burst(mk_vm *vm, int tag, int n) {
  int i;
  for (i = 0; i < n; i++) {
    mk_term *t = R(I(tag), I(i));
    mk_vm_send(vm, t, 0);
    mk_unref(t);
  }
}

static void test_queue_blocks(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec p, q;
  int i, ok = 1;
  char want[64];
  rec_init(&p, "P");
  rec_init(&q, "Q");
  rec_ep(&p, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(2), W()), 0);
  p.fn = echo3_script;
  rec_ep(&q, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(3), W()), 0);
  spawn(vm, &p);
  spawn(vm, &q);
  mk_vm_run(vm);
  queue_burst(vm, 2, 2000);
  CHECK(!mk_vm_idle(vm));
  mk_vm_run(vm);
  CHECK(mk_vm_idle(vm));
  CHECK(p.log.n == 1 + 2000 && q.log.n == 1 + 2000);
  for (i = 0; i < 2000 && ok && q.log.n == 2001 && p.log.n == 2001; i++) {
    snprintf(want, sizeof want, "message in rec(2, %d)", i);
    if (strcmp(p.log.v[1 + i], want) != 0) ok = 0;
    snprintf(want, sizeof want, "message in rec(3, %d)", i);
    if (strcmp(q.log.v[1 + i], want) != 0) ok = 0;
  }
  CHECK(ok);
  mk_vm_free(vm, NULL);
  rec_done(&p); rec_done(&q);

  /* When the queue empties, the VM keeps the blocks a burst added behind
  ** the head, up to MK_QKEEP: after 3,000 events (four blocks) the head,
  ** rewound, and three kept; the next such burst takes those three, no
  ** new ones; a burst that fits in the head lets them go; a burst of
  ** 10,000 events keeps MK_QKEEP. */
  vm = mk_vm_new();
  idle_topic = R(I(4), W());
  quiet_count = 0;
  mk_vm_spawn(vm, &quiet_behavior, NULL, NULL);
  mk_vm_run(vm);
  queue_burst(vm, 4, 3000);
  CHECK(vm->qhead != vm->qtail && vm->qhead->next != NULL && vm->qhead->next->next != NULL);
  mk_vm_run(vm);
  CHECK(quiet_count == 3000);
  CHECK(vm->qhead == vm->qtail && qblocks_count(vm->qfree) == 3);
  CHECK(vm->qhead->first == 0 && vm->qhead->last == 0);
  {
    mk_qblock *kept[3], *b;
    int reused = 1;
    for (i = 0, b = vm->qfree; i < 3; i++, b = b->next) kept[i] = b;
    queue_burst(vm, 4, 3000);
    CHECK(vm->qfree == NULL);
    for (i = 0, b = vm->qhead->next; i < 3; i++, b = b ? b->next : NULL)
      if (b != kept[i]) reused = 0;
    CHECK(reused);
  }
  mk_vm_run(vm);
  CHECK(quiet_count == 6000 && qblocks_count(vm->qfree) == 3);
  queue_burst(vm, 4, 1);
  mk_vm_run(vm);
  CHECK(quiet_count == 6001 && mk_vm_idle(vm));
  CHECK(vm->qhead == vm->qtail && vm->qfree == NULL);
  queue_burst(vm, 4, 10000);
  mk_vm_run(vm);
  CHECK(quiet_count == 16001 && qblocks_count(vm->qfree) == MK_QKEEP);
  mk_vm_free(vm, NULL);     /* frees the kept blocks too (valgrind, ASan) */
  mk_unref(idle_topic);
  END;
}

/* Run fn in a child process (its caps and crashes stay there): passed
** when it returns 1. */
static void in_child(int (*fn)(void)) {
  pid_t child;
  int status = -1;
  fflush(stdout);
  child = fork();
  if (child == 0) _exit(fn() ? 0 : 1);
  CHECK(child > 0 && waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

#if !MK_SANITIZED      /* ASan maps its own memory as it goes: no cap */
#include "vsize.h"

/* Cap this (child) process's address space at what it has and `more`
** bytes; the child exits when it cannot. */
static void cap_address_space(size_t more) {
  struct rlimit rl;
  size_t at = vsize();
  if (at == 0) _exit(2);
  rl.rlim_cur = rl.rlim_max = (rlim_t)at + (rlim_t)more;
  if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
}
#endif

/* Where no mapping can be had (the kernel's limit on mappings, or on
** address space, as here), the queue takes its blocks from malloc and
** goes on: in a child whose address space is capped at what it has, with
** free heap left for malloc to serve from. */
static int queue_unmapped(void) {
  mk_vm *vm;
  int ok;
#if !MK_SANITIZED
  mallopt(M_MMAP_THRESHOLD, 32 << 20);   /* glibc's most */
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  {                                   /* heap for malloc to serve from */
    char *volatile warm = malloc(8 << 20);   /* volatile: not elided */
    free(warm);
  }
  cap_address_space(0);
#endif
  vm = mk_vm_new();
  idle_topic = R(I(4), W());
  quiet_count = 0;
  mk_vm_spawn(vm, &quiet_behavior, NULL, NULL);
  mk_vm_run(vm);
  queue_burst(vm, 4, 3000);             /* four blocks */
  ok = vm->qhead->mapped == 0 && vm->qhead->next->mapped == 0;
  mk_vm_run(vm);
  return ok && quiet_count == 3000;
}

static void test_queue_unmapped(void) {
  BEGIN;
  in_child(queue_unmapped);
  END;
}

#if !MK_SANITIZED
/* A handler that takes 1 MiB blocks until the pool spends its reserve
** for one (pool.h), then gives them all back. */
static int hog_spent;
static void hog_handle(mk_proc *p, const mk_event *ev) {
  static void *blocks[1024];
  size_t n = 0;
  unsigned long at = mk_pool_nspent;
  (void)p; (void)ev;
  while (n < 1024 && mk_pool_nspent == at && (blocks[n] = mk_pool_malloc((size_t)1 << 20)) != NULL)
    n++;
  hog_spent += mk_pool_nspent != at;
  while (n > 0) free(blocks[--n]);
}
static const mk_behavior hog_behavior = { "hog", hog_handle, NULL, NULL, NULL, 0, NULL, NULL };

static mk_term *hog_reason;
static void hog_crash(void *ud, mk_proc *p, mk_term *reason) {
  (void)ud; (void)p;
  mk_unref(hog_reason);
  hog_reason = mk_ref(reason);
}
#endif

/* An event whose handler spends the pool's reserve fails its process
** with "not enough memory" (vm.c, charge), and nothing else: not the
** resident process, which belongs to whoever embeds the VM.  In a child
** whose address space is capped at what it has and 48 MiB more. */
static int memory_charge(void) {
  int ok = 1;
#if !MK_SANITIZED      /* ASan's shadow does not fit a cap */
  mk_vm *vm = mk_vm_new();
  mk_proc *res;
  mk_pid pid;
  if (!mk_pool_reserve()) return 0;
  cap_address_space((size_t)48 << 20);
  mk_vm_set_crash_hook(vm, hog_crash, NULL);
  pid = mk_vm_spawn(vm, &hog_behavior, NULL, "hog");
  mk_vm_run(vm);                        /* its boot spends the reserve */
  ok = ok && hog_spent == 1 && mk_vm_proc(vm, pid) == NULL;
  ok = ok && hog_reason != NULL && hog_reason->kind == MK_STR &&
       hog_reason->n == 17 && memcmp(mk_strdata(hog_reason), "not enough memory", 17) == 0;
  ok = ok && mk_pool_reserve();         /* taken again: the blocks went back */
  res = mk_vm_resident(vm, &hog_behavior, NULL, "resident");
  mk_yield(res, "c");                   /* its resume spends it again */
  mk_vm_run(vm);
  ok = ok && hog_spent == 2 && mk_proc_alive(res);
  mk_unref(hog_reason);
  mk_vm_free(vm, NULL);
#endif
  return ok;
}

static void test_memory_charge(void) {
  BEGIN;
  in_child(memory_charge);
  END;
}

static void meta_in_ground(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (ev->type != MK_EV_BOOT) return;
  t = R(I(1), W());
  rec_ret(r, mk_add_endpoint(p, "up", 1, role(MK_SUBSCRIBER, MK_PARTICIPANT, t)));
  mk_unref(t);
}

static void test_meta_above_ground_fails(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), I(1)), 0);
  a.fn = meta_in_ground;
  rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  spawn(vm, &b);
  mk_vm_run(vm);
  spawn(vm, &a);
  mk_vm_run(vm);
  CHECK(a.nret == 1 && a.ret[0] == -1);
  CHECK(a.destroyed == 1);
  CHECK(mk_vm_nprocs(vm) == 1);     /* the VM and B carry on */
  CHECK(log_count(&b.log, "presence ep publisher/participant rec(1, 1)") == 1);
  CHECK(log_count_prefix(&b.log, "absence ep publisher/participant rec(1, 1) \"at_meta_level") == 1);
  mk_vm_free(vm, NULL);
  rec_done(&a); rec_done(&b);
  END;
}

/* An at_meta_level list nested 100,000 levels deep, in the ground VM:
** the process fails, as with one level; counting its reach and freeing it
** recursed once per level and ran the C stack out. */
static void deep_meta(mk_proc *p, const mk_event *ev, rec *r) {
  mk_action *a;
  mk_term *one;
  int i;
  if (ev->type != MK_EV_BOOT) return;
  one = mk_int(1);
  a = mk_action_send(one);                /* (borrows it) */
  mk_unref(one);
  for (i = 0; i < 100000; i++) a = mk_action_meta(a);
  rec_ret(r, mk_at_meta_level(p, a));
}

static void test_meta_nested_deep_fails(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a;
  rec_init(&a, "A");
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), I(1)), 0);
  a.fn = deep_meta;
  spawn(vm, &a);
  mk_vm_run(vm);
  CHECK(a.nret == 1 && a.ret[0] == -1);
  CHECK(a.destroyed == 1);
  mk_vm_free(vm, NULL);
  rec_done(&a);
  END;
}

/* A message a C process could not build (its builder gave NULL: deeper
** than the depth limit here) fails that process, with a reason its peers
** see; the VM and the others carry on. */
static void unbuilt_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  if (r->mode >= 4) {
    /* An endpoint a C caller got wrong: no name, an orientation or an
    ** interest out of its enum (ints in C). */
    mk_role role;
    role.orientation = r->mode == 5 ? (mk_orientation)5 : MK_PUBLISHER;
    role.interest = r->mode == 6 ? (mk_interest)7 : MK_PARTICIPANT;
    role.topic = t = I(9);
    rec_ret(r, mk_add_endpoint(p, r->mode == 4 ? NULL : "odd", 0, role));
    mk_unref(t);
    return;
  }
  CHECK(mk_term_set_depth_limit(1) == 0);
  t = R(I(1), R(I(2), I(3)));       /* two levels: NULL */
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  CHECK(t == NULL);
  if (r->mode >= 2) {
    /* The unifier of two terms within the size limit's maximum can be
    ** twice that: sending it, or taking it as a topic, fails the process. */
    mk_term *a = I(1), *b, *x, *y;
    int i;
    CHECK(mk_term_set_size_limit(MK_TERM_SIZE_MAX) == 0);
    for (i = 0; i < 21 && a; i++) a = R(mk_ref(a), a);      /* 2^22 - 1 nodes, shared */
    b = R(R(mk_ref(a), mk_ref(a)), a);                      /* 1.5 * 2^23 - 1 */
    x = R(mk_ref(b), W());
    y = R(W(), b);
    CHECK(x != NULL && y != NULL);
    t = mk_unify(x, y);
    mk_unref(x);
    mk_unref(y);
    CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
    CHECK(t != NULL && mk_term_size(t) > MK_TERM_SIZE_MAX);
    if (r->mode == 2) mk_send(p, t);
    else {
      mk_role role;
      role.orientation = MK_PUBLISHER;
      role.interest = MK_PARTICIPANT;
      role.topic = t;
      mk_add_endpoint(p, "big", 0, role);
    }
    mk_unref(t);
    return;
  }
  if (r->mode == 0) mk_send(p, t); else mk_feedback(p, t);
}

static void test_send_unbuilt(void) {
  BEGIN;
  int mode;
  static const char *const why[] = {
    "send: no message (a term past the depth or size limit, or out of memory)",
    "feedback: no message (a term past the depth or size limit, or out of memory)",
    "send: a term of more than 16777216 nodes",
    "endpoint 'big': a topic of more than 16777216 nodes",
    "an endpoint has no name (NULL)",
    "endpoint 'odd': orientation 5 or interest 0 out of range",
    "endpoint 'odd': orientation 0 or interest 7 out of range" };
  for (mode = 0; mode < 7; mode++) {
    mk_vm *vm = mk_vm_new();
    rec a, b;
    char want[200];
    rec_init(&a, "A");
    rec_init(&b, "B");
    rec_ctl(&a);
    rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), I(1)), 0);
    a.fn = unbuilt_script;
    a.mode = mode;
    rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(W(), W()), 0);
    spawn(vm, &a);
    spawn(vm, &b);
    mk_vm_run(vm);
    mk_vm_send(vm, NULL, 0);          /* from outside: nothing at all */
    poke(vm, "A");
    mk_vm_run(vm);
    CHECK(a.destroyed == 1 && mk_vm_nprocs(vm) == 1);
    CHECK(mode < 4 || (a.nret == 1 && a.ret[0] == -1));
    snprintf(want, sizeof want, "absence ep publisher/participant rec(1, 1) \"%s\"", why[mode]);
    CHECK(log_count(&b.log, want) == 1);
    mk_vm_free(vm, NULL);
    rec_done(&a); rec_done(&b);
  }
  END;
}

/* ---- slices (mk_vm_run_for) ------------------------------------------------ */

/* A process that sends itself a message for every one it gets, counting
** them in *data: its VM never runs out of events. */
static void storm_handle(mk_proc *p, const mk_event *ev) {
  mk_term *t = Ctl("storm");
  if (ev->type == MK_EV_BOOT) {
    mk_add_endpoint(p, "in", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, t));
    mk_add_endpoint(p, "out", 0, role(MK_PUBLISHER, MK_PARTICIPANT, t));
  } else if (ev->type == MK_EV_MESSAGE) {
    ++*(long *)mk_proc_data(p);
  }
  if (ev->type == MK_EV_BOOT || ev->type == MK_EV_MESSAGE) mk_send(p, t);
  mk_unref(t);
}
static const mk_behavior storm_behavior = { "storm", storm_handle, NULL, NULL, NULL, 0, NULL, NULL };

static void test_run_for(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new(), *inner;
  long top = 0, nested = 0;
  mk_term *ctl = Ctl("R");
  rec r;
  size_t n;
  int i;
  /* mk_vm_run would never return: a slice does, having run the storm */
  mk_vm_spawn(vm, &storm_behavior, &top, "storm");
  n = mk_vm_run_for(vm, 5);
  CHECK(n > 100 && top > 100 && !mk_vm_idle(vm));
  /* a slice passed already still delivers */
  n = mk_vm_run_for(vm, 0);
  CHECK(n >= 1 && !mk_vm_idle(vm));
  /* the same storm inside a nested VM keeps the nested VM busy, not its
  ** parent: a process of the parent still hears its ctl, and both storms
  ** go on */
  inner = mk_nested_new(vm, &storm_behavior, &nested, "inner storm");
  mk_vm_spawn(vm, &mk_nested_behavior, inner, "nest");
  rec_init(&r, "R");
  rec_ctl(&r);
  spawn(vm, &r);
  for (i = 0; i < 50 && r.boots == 0; i++) mk_vm_run_for(vm, 2);
  CHECK(r.boots == 1);
  mk_vm_send(vm, ctl, 0);
  mk_unref(ctl);
  for (i = 0; i < 50 && log_count_prefix(&r.log, "message ctl") == 0; i++) mk_vm_run_for(vm, 2);
  CHECK(log_count_prefix(&r.log, "message ctl") == 1);
  /* A turn of the nested VM is up to 1 ms of its events, one of the
  ** parent's storm one event: each has one or two turns a slice. */
  top = nested = 0;
  for (i = 0; i < 10; i++) mk_vm_run_for(vm, 2);
  if (!(top >= 10 && nested > 100)) fprintf(stderr, "  top %ld, nested %ld\n", top, nested);
  CHECK(top >= 10 && nested > 100);
  /* and killing them all ends, storms and all */
  mk_vm_free(vm, NULL);
  rec_done(&r);
  END;
}

/* ---- nested VMs ---------------------------------------------------------- */

/* Child of a nested VM: on ctl at meta level, mode 0 sends up one level,
** mode 1 sends locally, mode 2 quits with "bye", mode 3 crashes. */
static void child_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (ev->type == MK_EV_BOOT && r->ud) {
    rec_ret(r, (int)mk_spawn(p, &recb, r->ud, "sibling", NULL));
    return;
  }
  if (ev->type != MK_EV_MESSAGE || strcmp(ev->endpoint, "ctl") != 0) return;
  switch (r->mode) {
    case 0: rec_ret(r, mk_at_meta_level(p, mk_action_send(t = R(I(1), I(4))))); mk_unref(t); break;
    case 1: mk_send(p, t = R(I(1), I(5))); mk_unref(t); break;
    case 2: mk_quit(p, 0, t = mk_cstr("bye")); mk_unref(t); break;
    default: mk_fail(p, t = mk_cstr("crash")); mk_unref(t); break;
  }
}

static void test_nested_meta_message(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec c, g, h;
  mk_pid n;
  mk_term *t;
  rec_init(&c, "C");
  rec_init(&g, "G");
  rec_init(&h, "H");
  rec_ep(&c, "up", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 1);
  rec_ep(&c, "ctl", MK_SUBSCRIBER, MK_PARTICIPANT, Ctl("C"), 1);
  rec_ep(&c, "local", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  c.fn = child_script;
  rec_ep(&g, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), I(2)), 0);
  rec_ep(&h, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  n = mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  mk_vm_run(vm);
  CHECK(c.boots == 1);
  CHECK(strcmp(c.path, "ground/1") == 0);
  CHECK(mk_vm_nprocs(vm) == 1);
  /* the nested-VM process holds "<child pid>/up" in the ground */
  CHECK(mkI_endpoint(vm, n, "1/up") != NULL);
  CHECK(mkI_endpoint(vm, n, "1/local") == NULL);
  spawn(vm, &g);
  spawn(vm, &h);
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "presence@1 up publisher/participant rec(1, 2)") == 1);
  /* G sees the nested VM's endpoint and H's: two edges */
  CHECK(log_count(&g.log, "presence ep subscriber/participant rec(1, 2)") == 2);
  CHECK(log_count_prefix(&c.log, "presence local") == 0);   /* different VM */
  /* ground -> child */
  t = R(I(1), I(3));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "message@1 up rec(1, 3)") == 1);
  CHECK(strcmp(c.msgrole, "subscriber/participant rec(1, _)") == 0);   /* its endpoint's role */
  CHECK(log_count_prefix(&c.log, "message local") == 0);
  CHECK(log_count(&h.log, "message ep rec(1, 3)") == 1);
  /* child -> ground, at meta level */
  poke(vm, "C");
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "message@1 ctl ctl(\"C\")") == 1);
  CHECK(c.nret == 1 && c.ret[0] == 0);
  CHECK(log_count(&h.log, "message ep rec(1, 4)") == 1);
  CHECK(log_count(&c.log, "message@1 up rec(1, 4)") == 1);   /* its own meta subscriber */
  /* a local send stays in the nested VM */
  c.mode = 1;
  poke(vm, "C");
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "message local rec(1, 5)") == 1);
  CHECK(log_count_prefix(&h.log, "message ep rec(1, 5)") == 0);
  CHECK(log_count_prefix(&c.log, "message@1 up rec(1, 5)") == 0);
  mk_vm_free(vm, NULL);
  CHECK(c.destroyed == 1 && g.destroyed == 1 && h.destroyed == 1);
  rec_done(&c); rec_done(&g); rec_done(&h);
  END;
}

/* ---- the match cache ---------------------------------------------------- */

/* Messages of one shape, sent again and again, as a channel's are (the
** routing index answers them from its cache, route.c): every change of
** the subscribers in between shows in the next delivery, in the ground
** VM and through a nested VM's meta-level endpoint.  send_twice returns
** the events the two sends made: none may go to an endpoint that went. */
static size_t send_twice(mk_vm *vm, mk_term *m) {
  size_t n;
  mk_vm_send(vm, m, 0);
  n = mk_vm_run(vm);
  mk_vm_send(vm, m, 0);
  return n + mk_vm_run(vm);
}

static void test_route_cache(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b, c, d, n;
  rec *all[] = {&a, &b, &c, &d};
  mk_term *m1 = R(I(1), I(10)), *m2 = R(I(1), I(11));
  mk_pid pa, pn;
  size_t i;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_init(&c, "C");
  rec_init(&d, "D");
  rec_init(&n, "N");
  rec_ep(&a, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&b, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&c, "in", MK_SUBSCRIBER, MK_OBSERVER, R(W(), W()), 0);   /* wildcard first item */
  rec_ep(&d, "in", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), I(11)), 0);   /* reads the second */
  rec_ep(&n, "up", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 1);
  rec_ep(&n, "ctl", MK_SUBSCRIBER, MK_PARTICIPANT, Ctl("N"), 1);
  n.fn = child_script;
  n.mode = 2;   /* quits on ctl */
  pa = spawn(vm, &a);
  mk_vm_run(vm);
  CHECK(send_twice(vm, m1) == 2);
  CHECK(log_count(&a.log, "message in rec(1, 10)") == 2);
  /* a subscriber added between two sends of the same message */
  spawn(vm, &b);
  mk_vm_run(vm);
  CHECK(send_twice(vm, m1) == 4);
  CHECK(log_count(&a.log, "message in rec(1, 10)") == 4);
  CHECK(log_count(&b.log, "message in rec(1, 10)") == 2);
  /* and one removed */
  CHECK(mk_vm_kill(vm, pa, NULL) == 0);
  mk_vm_run(vm);
  CHECK(send_twice(vm, m1) == 2);
  CHECK(log_count(&a.log, "message in rec(1, 10)") == 4);
  CHECK(log_count(&b.log, "message in rec(1, 10)") == 4);
  /* a wildcard subscriber */
  spawn(vm, &c);
  mk_vm_run(vm);
  CHECK(send_twice(vm, m1) == 4);
  CHECK(log_count(&b.log, "message in rec(1, 10)") == 6);
  CHECK(log_count(&c.log, "message in rec(1, 10)") == 2);
  /* one that reads where the others stepped over: m1 and m2 now differ */
  spawn(vm, &d);
  mk_vm_run(vm);
  CHECK(send_twice(vm, m1) == 4);
  CHECK(send_twice(vm, m2) == 6);
  CHECK(log_count(&b.log, "message in rec(1, 10)") == 8);
  CHECK(log_count(&b.log, "message in rec(1, 11)") == 2);
  CHECK(log_count(&c.log, "message in rec(1, 11)") == 2);
  CHECK(log_count_prefix(&d.log, "message in rec(1, 10)") == 0);
  CHECK(log_count(&d.log, "message in rec(1, 11)") == 2);
  /* a nested VM's child subscribes one level up, then quits */
  pn = mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &n, "child"), "nest");
  mk_vm_run(vm);
  CHECK(send_twice(vm, m1) == 6);   /* the nested VM's process and its child */
  CHECK(log_count(&n.log, "message@1 up rec(1, 10)") == 2);
  CHECK(log_count(&b.log, "message in rec(1, 10)") == 10);
  poke(vm, "N");
  mk_vm_run(vm);
  CHECK(mk_vm_proc(vm, pn) == NULL);
  CHECK(send_twice(vm, m1) == 4);
  CHECK(log_count(&n.log, "message@1 up rec(1, 10)") == 2);
  CHECK(log_count(&b.log, "message in rec(1, 10)") == 12);
  mk_unref(m1);
  mk_unref(m2);
  mk_vm_free(vm, NULL);
  for (i = 0; i < sizeof all / sizeof *all; i++) {
    CHECK(all[i]->destroyed == 1);
    rec_done(all[i]);
  }
  CHECK(n.destroyed == 1);
  rec_done(&n);
  END;
}

/* Two levels up through two nested VMs.  Mode 0 sends two levels up, mode 1
** one level up, mode 2 quits with "done2". */
static void deep_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (ev->type == MK_EV_BOOT) {
    mk_action *l;
    t = R(I(2), W());
    l = mk_action_add("up2", role(MK_SUBSCRIBER, MK_PARTICIPANT, t));
    mk_unref(t);
    t = Ctl("C");
    l = mk_action_append(l, mk_action_add("ctl", role(MK_SUBSCRIBER, MK_PARTICIPANT, t)));
    mk_unref(t);
    rec_ret(r, mk_at_meta_level(p, meta_list(l)));
    return;
  }
  if (ev->type != MK_EV_MESSAGE || strcmp(ev->endpoint, "ctl") != 0) return;
  switch (r->mode) {
    case 0:
      t = R(I(2), I(9));
      rec_ret(r, mk_at_meta_level(p, meta_list(mk_action_send(t))));
      mk_unref(t);
      break;
    case 1:
      t = R(I(2), I(10));
      rec_ret(r, mk_at_meta_level(p, mk_action_send(t)));
      mk_unref(t);
      break;
    default:
      t = mk_cstr("done2");
      mk_quit(p, 0, t);
      mk_unref(t);
      break;
  }
}

static void test_nested_two_levels(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec c, pub, h;
  mk_pid n1;
  mk_term *t;
  void *inner;
  rec_init(&c, "C");
  rec_init(&pub, "P");
  rec_init(&h, "H");
  c.fn = deep_script;
  rec_ep(&pub, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(2), I(7)), 0);
  rec_ep(&h, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(2), W()), 0);
  inner = mk_nested_new(NULL, &recb, &c, "C");
  n1 = mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &mk_nested_behavior, inner, "n2"),
                   "n1");
  mk_vm_run(vm);
  CHECK(c.boots == 1);
  CHECK(strcmp(c.path, "ground/1/1") == 0);
  CHECK(c.nret == 1 && c.ret[0] == 0);
  /* it holds endpoints two levels up: not finished */
  CHECK(c.destroyed == 0);
  CHECK(mk_vm_nprocs(vm) == 1);
  CHECK(mkI_endpoint(vm, n1, "1/1/up2") != NULL);
  spawn(vm, &pub);
  spawn(vm, &h);
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "presence@2 up2 publisher/participant rec(2, 7)") == 1);
  /* P sees the nested VMs' endpoint and H's */
  CHECK(log_count(&pub.log, "presence ep subscriber/participant rec(2, 7)") == 2);
  /* ground -> two levels down */
  t = R(I(2), I(8));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "message@2 up2 rec(2, 8)") == 1);
  /* two levels up -> ground */
  poke(vm, "C");
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "message@2 ctl ctl(\"C\")") == 1);
  CHECK(log_count(&h.log, "message ep rec(2, 9)") == 1);
  CHECK(log_count(&c.log, "message@2 up2 rec(2, 9)") == 1);
  /* one level up stays in the middle VM */
  c.mode = 1;
  poke(vm, "C");
  mk_vm_run(vm);
  CHECK(c.nret == 3 && c.ret[1] == 0 && c.ret[2] == 0);
  CHECK(log_count_prefix(&h.log, "message ep rec(2, 10)") == 0);
  /* the child quits: its ground endpoints go with its reason, both nested
  ** VMs are empty and quit */
  c.mode = 2;
  poke(vm, "C");
  mk_vm_run(vm);
  CHECK(c.destroyed == 1);
  CHECK(log_count(&pub.log, "absence ep subscriber/participant rec(2, 7) \"done2\"") == 1);
  CHECK(mk_vm_proc(vm, n1) == NULL);
  CHECK(mk_vm_nprocs(vm) == 2);
  mk_vm_free(vm, NULL);
  rec_done(&c); rec_done(&pub); rec_done(&h);
  END;
}

/* Endpoints named "x" one and two levels up and nothing else; each message
** on the upper "x" deletes one of them, the lower first. */
static void meta_delete_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (ev->type == MK_EV_BOOT) {
    t = R(I(5), W());
    rec_ret(r, mk_add_endpoint(p, "x", 1, role(MK_SUBSCRIBER, MK_PARTICIPANT, t)));
    mk_unref(t);
    t = R(I(6), W());
    rec_ret(r, mk_at_meta_level(p, meta_list(mk_action_add("x", role(MK_SUBSCRIBER,
                                                                     MK_PARTICIPANT, t)))));
    mk_unref(t);
    return;
  }
  if (ev->type != MK_EV_MESSAGE || ev->meta != 2) return;
  if (r->mode++ == 0) rec_ret(r, mk_delete_endpoint(p, "x", 1, NULL));
  else rec_ret(r, mk_at_meta_level(p, meta_list(mk_action_delete("x", NULL))));
}

static void test_nested_meta_delete(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec c, pub;
  mk_pid n1;
  mk_term *t;
  rec_init(&c, "C");
  rec_init(&pub, "P");
  c.fn = meta_delete_script;
  rec_ep(&pub, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(W(), I(1)), 0);
  n1 = mk_vm_spawn(vm, &mk_nested_behavior,
                   mk_nested_new(vm, &mk_nested_behavior, mk_nested_new(NULL, &recb, &c, "C"), "n2"),
                   "n1");
  spawn(vm, &pub);
  mk_vm_run(vm);
  CHECK(c.nret == 2 && c.ret[0] == 0 && c.ret[1] == 0);
  CHECK(c.destroyed == 0);
  CHECK(log_count(&pub.log, "presence ep subscriber/participant rec(6, 1)") == 1);
  CHECK(log_count(&c.log, "presence@2 x publisher/participant rec(6, 1)") == 1);
  /* "x" one level up goes; "x" two levels up is a different endpoint and
  ** keeps C alive */
  t = R(I(6), I(2));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(log_count(&c.log, "message@2 x rec(6, 2)") == 1);
  CHECK(c.nret == 3 && c.ret[2] == 0);
  CHECK(c.destroyed == 0);
  CHECK(mkI_endpoint(vm, n1, "1/1/x") != NULL);
  CHECK(log_count_prefix(&pub.log, "absence") == 0);
  /* the upper "x" goes: P sees it, C has finished, and so have both
  ** nested VMs */
  t = R(I(6), I(3));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(c.nret == 4 && c.ret[3] == 0);
  CHECK(log_count(&pub.log, "absence ep subscriber/participant rec(6, 1) nil") == 1);
  CHECK(c.destroyed == 1);
  CHECK(mk_vm_proc(vm, n1) == NULL);
  CHECK(mk_vm_nprocs(vm) == 1);
  mk_vm_free(vm, NULL);
  rec_done(&c); rec_done(&pub);
  END;
}

static void test_nested_exit_quits_parent_process(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec c, w;
  mk_pid n;
  rec_init(&c, "C");
  rec_init(&w, "W");
  /* a watcher in the ground sees the nested VM's meta endpoint go */
  rec_ep(&w, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), I(1)), 0);
  spawn(vm, &w);
  mk_vm_run(vm);
  /* a child with nothing to do: finishes at once, and so does its VM */
  n = mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  mk_vm_run(vm);
  CHECK(c.boots == 1 && c.destroyed == 1);
  CHECK(mk_vm_proc(vm, n) == NULL);
  CHECK(mk_vm_nprocs(vm) == 1);
  rec_done(&c);
  /* a child that quits later, with meta endpoints */
  rec_init(&c, "C");
  rec_ep(&c, "up", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 1);
  rec_ep(&c, "ctl", MK_SUBSCRIBER, MK_PARTICIPANT, Ctl("C"), 1);
  c.fn = child_script;
  c.mode = 2;
  n = mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  mk_vm_run(vm);
  CHECK(mk_vm_proc(vm, n) != NULL && c.destroyed == 0);
  CHECK(log_count(&w.log, "presence ep subscriber/participant rec(1, 1)") == 1);
  poke(vm, "C");
  mk_vm_run(vm);
  CHECK(c.destroyed == 1);
  CHECK(mk_vm_proc(vm, n) == NULL);
  CHECK(mk_vm_nprocs(vm) == 1);
  CHECK(log_count(&w.log, "absence ep subscriber/participant rec(1, 1) \"bye\"") == 1);
  mk_vm_free(vm, NULL);
  rec_done(&c); rec_done(&w);
  END;
}

static void test_nested_local_only_stays(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec c;
  mk_pid n;
  rec_init(&c, "C");
  /* endpoints inside the nested VM only: nothing in the ground, yet the
  ** nested VM has a live process and must not be taken for finished */
  rec_ep(&c, "local", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  n = mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  mk_vm_run(vm);
  CHECK(c.boots == 1 && c.destroyed == 0);
  CHECK(mk_vm_proc(vm, n) != NULL);
  CHECK(mk_vm_nprocs(vm) == 1);
  mk_vm_free(vm, NULL);
  CHECK(c.destroyed == 1);
  rec_done(&c);
  END;
}

static void test_nested_child_crash_drops_meta_endpoints(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec c, sib, w;
  mk_pid n;
  mk_term *t;
  rec_init(&c, "C");
  rec_init(&sib, "sib");
  rec_init(&w, "W");
  rec_ep(&c, "up", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 1);
  rec_ep(&c, "ctl", MK_SUBSCRIBER, MK_PARTICIPANT, Ctl("C"), 1);
  c.fn = child_script;
  c.mode = 3;
  c.ud = &sib;   /* spawned at boot; keeps the nested VM alive */
  rec_ep(&sib, "stay", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(99), W()), 0);
  rec_ep(&w, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), I(1)), 0);
  n = mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  spawn(vm, &w);
  mk_vm_run(vm);
  CHECK(sib.boots == 1);
  CHECK(log_count(&w.log, "presence ep subscriber/participant rec(1, 1)") == 1);
  CHECK(log_count(&c.log, "presence@1 up publisher/participant rec(1, 1)") == 1);
  poke(vm, "C");
  mk_vm_run(vm);
  CHECK(c.destroyed == 1 && sib.destroyed == 0);
  CHECK(log_count(&w.log, "absence ep subscriber/participant rec(1, 1) \"crash\"") == 1);
  CHECK(mk_vm_proc(vm, n) != NULL);
  CHECK(mkI_endpoint(vm, n, "1/up") == NULL);
  CHECK(mkI_endpoint(vm, n, "1/ctl") == NULL);
  /* nothing more reaches the dead child */
  t = R(I(1), I(1));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(log_count_prefix(&c.log, "message@1 up") == 0);
  /* killing the nested VM from outside ends its children */
  CHECK(mk_vm_kill(vm, n, NULL) == 0);
  mk_vm_run(vm);
  CHECK(sib.destroyed == 1);
  CHECK(mk_vm_nprocs(vm) == 1);
  mk_vm_free(vm, NULL);
  rec_done(&c); rec_done(&sib); rec_done(&w);
  END;
}

/* ---- freeing with live processes ---------------------------------------- */

static void yield_on_ctl(mk_proc *p, const mk_event *ev, rec *r) {
  if (is_ctl(ev)) mk_yield(p, "y");
}

static void test_vm_free_live(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec y, a, b, o, c, w;
  mk_term *why = mk_cstr("shutdown"), *t;
  rec_init(&y, "Y");
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_init(&o, "O");
  rec_init(&c, "C");
  rec_init(&w, "W");
  rec_ctl(&y);
  y.fn = yield_on_ctl;
  rec_ep(&a, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&b, "ep", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), I(2)), 0);
  rec_ep(&o, "obs", MK_SUBSCRIBER, MK_EVERYTHING, R(I(1), W()), 0);
  rec_ep(&c, "up", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(3), W()), 1);
  rec_ep(&w, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(3), I(3)), 0);
  spawn(vm, &y);                /* lowest pid: killed first */
  spawn(vm, &a);
  mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  spawn(vm, &b);
  spawn(vm, &o);
  spawn(vm, &w);
  mk_vm_run(vm);
  CHECK(log_count(&w.log, "presence ep subscriber/participant rec(3, 3)") == 1);
  CHECK(mk_vm_nprocs(vm) == 6);
  /* leave a resume token and a message queued */
  poke(vm, "Y");
  t = R(I(1), I(2));
  mk_vm_send(vm, t, 0);
  mk_unref(t);
  CHECK(mk_vm_step(vm) == 1);   /* Y yields: its resume is queued */
  CHECK(!mk_vm_idle(vm));
  mk_vm_free(vm, why);
  CHECK(y.destroyed == 1 && a.destroyed == 1 && b.destroyed == 1 && o.destroyed == 1);
  CHECK(c.destroyed == 1 && w.destroyed == 1);
  CHECK(y.released == 1);                       /* the token, never delivered */
  CHECK(log_count_prefix(&y.log, "resume") == 0);
  /* A goes before B and O: they see it go with the reason; the nested VM
  ** goes before W: W sees its meta endpoint go */
  CHECK(log_count(&b.log, "absence ep publisher/participant rec(1, 2) \"shutdown\"") == 1);
  CHECK(log_count(&o.log, "absence obs publisher/participant rec(1, _) \"shutdown\"") == 1);
  CHECK(log_count(&w.log, "absence ep subscriber/participant rec(3, 3) \"shutdown\"") == 1);
  mk_unref(why);
  rec_done(&y); rec_done(&a); rec_done(&b); rec_done(&o); rec_done(&c); rec_done(&w);
  END;
}

/* ---- the ground VM -------------------------------------------------------- */

typedef struct ground_ud {
  mk_ground *g;
  int fd;
  int64_t at;
  char got[8];
  int keep;
} ground_ud;

static void alarm_script(mk_proc *p, const mk_event *ev, rec *r) {
  ground_ud *u = r->ud;
  mk_term *t;
  if (ev->type == MK_EV_BOOT) {
    t = mk_rec(mk_ground_alarm, mk_int(u->at));
    rec_ret(r, mk_add_endpoint(p, "alarm", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, t)));
    mk_unref(t);
  } else if (ev->type == MK_EV_MESSAGE && !u->keep) {
    mk_delete_endpoint(p, "alarm", 0, NULL);
  }
}

static void test_ground_alarm(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  rec a, b;
  ground_ud ua, ub;
  double t0, t1;
  char want[128];
  memset(&ua, 0, sizeof ua);
  memset(&ub, 0, sizeof ub);
  rec_init(&a, "A");
  rec_init(&b, "B");
  t0 = ev_time();
  ua.g = g;
  ua.at = (int64_t)(t0 * 1000.0) + 20;
  ub.g = g;
  ub.at = (int64_t)(t0 * 1000.0) + 5;
  ub.keep = 1;            /* keeps its (now spent) subscription */
  a.fn = alarm_script;
  a.ud = &ua;
  b.fn = alarm_script;
  b.ud = &ub;
  spawn(vm, &a);
  spawn(vm, &b);
  CHECK(mk_ground_run(g) == 0);
  t1 = ev_time();
  snprintf(want, sizeof want, "message alarm market:alarm(%lld)", (long long)ua.at);
  CHECK(log_count(&a.log, want) == 1);
  snprintf(want, sizeof want, "message alarm market:alarm(%lld)", (long long)ub.at);
  CHECK(log_count(&b.log, want) == 1);
  CHECK(t1 * 1000.0 >= (double)ua.at - 2.0);   /* not early */
  CHECK(t1 - t0 < 2.0);                        /* and not stuck */
  {
    char bw[140];
    snprintf(bw, sizeof bw, "B: %s", want);
    CHECK(log_find(&glog, bw) >= 0);
    snprintf(want, sizeof want, "A: message alarm market:alarm(%lld)", (long long)ua.at);
    CHECK(log_find(&glog, bw) < log_find(&glog, want));   /* the earlier alarm first */
  }
  CHECK(a.destroyed == 1);
  CHECK(b.destroyed == 0 && mk_vm_nprocs(vm) == 1);
  CHECK(mk_ground_watching(g) == 0);
  CHECK(mk_ground_now(g) >= (double)ua.at - 2.0);
  mk_ground_free(g, NULL);
  CHECK(b.destroyed == 1);
  ev_loop_destroy(loop);
  rec_done(&a); rec_done(&b);
  END;
}

/* A nested child subscribes to a ground alarm at meta level. */
static void meta_alarm_script(mk_proc *p, const mk_event *ev, rec *r) {
  ground_ud *u = r->ud;
  mk_term *t;
  if (ev->type == MK_EV_BOOT) {
    t = mk_rec(mk_ground_alarm, mk_int(u->at));
    rec_ret(r, mk_add_endpoint(p, "alarm", 1, role(MK_SUBSCRIBER, MK_PARTICIPANT, t)));
    mk_unref(t);
  } else if (ev->type == MK_EV_MESSAGE) {
    mk_delete_endpoint(p, "alarm", 1, NULL);
  }
}

static void test_ground_nested_alarm(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  rec c;
  ground_ud u;
  char want[128];
  memset(&u, 0, sizeof u);
  rec_init(&c, "C");
  u.g = g;
  u.at = (int64_t)(ev_time() * 1000.0) + 10;
  c.fn = meta_alarm_script;
  c.ud = &u;
  mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  CHECK(mk_ground_run(g) == 0);
  snprintf(want, sizeof want, "message@1 alarm market:alarm(%lld)", (long long)u.at);
  CHECK(log_count(&c.log, want) == 1);
  CHECK(ev_time() * 1000.0 >= (double)u.at - 2.0);
  /* it withdrew: the child, then its VM, finished */
  CHECK(c.destroyed == 1 && mk_vm_nprocs(vm) == 0);
  CHECK(mk_ground_watching(g) == 0);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  rec_done(&c);
  END;
}

/* ground.h's settle hook: called after each slice of deliveries, with the
** slice's events handled, and no more once removed. */
typedef struct settle_ud {
  rec *r;
  int calls;
  int boots_seen;        /* r->boots at the first call */
} settle_ud;

static void settle_count(void *ud) {
  settle_ud *u = ud;
  if (u->calls++ == 0) u->boots_seen = u->r->boots;
}

static void test_ground_settle(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  rec r, r2;
  settle_ud u = {&r, 0, -1};
  int calls;
  rec_init(&r, "A");
  rec_init(&r2, "B");
  mk_ground_on_settle(g, settle_count, &u);
  spawn(mk_ground_vm(g), &r);
  CHECK(u.calls == 0);               /* nothing delivered yet */
  mk_ground_step(g);
  CHECK(u.calls >= 1);
  CHECK(u.boots_seen == 1);          /* after the boot, in the same slice */
  calls = u.calls;
  mk_ground_on_settle(g, NULL, &u);
  spawn(mk_ground_vm(g), &r2);
  mk_ground_step(g);
  CHECK(r2.boots == 1);
  CHECK(u.calls == calls);           /* removed: not called again */
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  rec_done(&r);
  rec_done(&r2);
  END;
}

/* A process that arms a timeout at boot (disarming it at once when `stop`)
** and asks for nothing else: only the timeout keeps it. */
typedef struct timeout_ud {
  mk_ground *g;
  mk_timeout t;
  double at;
  int stop;
} timeout_ud;

static char woken_order[8];       /* the tags of the processes woken, in order */

static void timeout_script(mk_proc *p, const mk_event *ev, rec *r) {
  timeout_ud *u = r->ud;
  if (ev->type == MK_EV_RESUME && strlen(woken_order) < sizeof woken_order - 1)
    strcat(woken_order, r->tag);
  if (ev->type != MK_EV_BOOT) return;
  u->t.at = u->at;
  u->t.proc = p;
  u->t.cont = (void *)r->tag;
  mk_timeout_start(u->g, &u->t);
  if (u->stop) mk_timeout_stop(u->g, &u->t);
}

/* ground.h's timeouts: deadline order, equal deadlines in the order armed,
** one clock for them all (one watch), a stopped one never fires, the
** process kept while its timeout is armed and woken through two nested
** VMs, no timer left when they are done. */
static void test_ground_timeouts(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  static const char *const tags[] = { "A", "B", "C", "D", "E" };
  static const double ms[] = { 40, 10, 10, 20, 25 };
  rec r[5];
  timeout_ud u[5];
  double t0 = mk_ground_clock();
  int i;
  for (i = 0; i < 5; i++) {
    rec_init(&r[i], tags[i]);
    memset(&u[i], 0, sizeof u[i]);
    u[i].g = g;
    u[i].at = t0 + ms[i];        /* B and C: the same deadline */
    u[i].stop = i == 3;            /* D disarms its own */
    r[i].fn = timeout_script;
    r[i].ud = &u[i];
  }
  for (i = 0; i < 4; i++) spawn(vm, &r[i]);
  /* E two nested VMs down */
  mk_vm_spawn(vm, &mk_nested_behavior,
              mk_nested_new(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &r[4], "E"), "inner"),
              "outer");
  CHECK(mk_ground_step(g) != 0);
  CHECK(mk_ground_watching(g) == 1);
  CHECK(r[0].destroyed == 0 && r[1].destroyed == 0 && r[2].destroyed == 0 && r[4].destroyed == 0);
  CHECK(r[3].destroyed == 1);      /* nothing kept it */
  CHECK(mk_ground_run(g) == 0);
  CHECK(mk_ground_clock() - t0 >= 40);
  CHECK(log_count(&r[3].log, "resume D") == 0);
  for (i = 0; i < 5; i++) {
    char want[16];
    snprintf(want, sizeof want, "resume %s", tags[i]);
    CHECK(i == 3 || log_count(&r[i].log, want) == 1);
    CHECK(r[i].destroyed == 1 && u[i].t.slot == 0);
  }
  CHECK(strcmp(woken_order, "BCEA") == 0);
  CHECK(mk_ground_watching(g) == 0 && mk_vm_nprocs(vm) == 0);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  for (i = 0; i < 5; i++) rec_done(&r[i]);
  END;
}

static void readable_script(mk_proc *p, const mk_event *ev, rec *r) {
  ground_ud *u = r->ud;
  mk_term *t;
  if (ev->type == MK_EV_BOOT) {
    t = mk_rec(mk_ground_readable, mk_int(u->fd));
    rec_ret(r, mk_add_endpoint(p, "rd", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, t)));
    mk_unref(t);
  } else if (ev->type == MK_EV_MESSAGE) {
    ssize_t n = read(u->fd, u->got, sizeof u->got - 1);
    if (n > 0) u->got[n] = 0;
    mk_delete_endpoint(p, "rd", 0, NULL);
  }
}

static void test_ground_readable(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  rec a;
  ground_ud u;
  int fds[2];
  char want[128];
  memset(&u, 0, sizeof u);
  rec_init(&a, "A");
  CHECK(pipe(fds) == 0);
  u.g = g;
  u.fd = fds[0];
  a.fn = readable_script;
  a.ud = &u;
  spawn(vm, &a);
  CHECK(mk_ground_step(g) != 0);        /* watching, nothing to read yet */
  CHECK(mk_ground_watching(g) == 1);
  CHECK(log_count_prefix(&a.log, "message") == 0);
  CHECK(write(fds[1], "xy", 2) == 2);
  CHECK(mk_ground_run(g) == 0);
  snprintf(want, sizeof want, "message rd market:readable(%d)", fds[0]);
  CHECK(log_count(&a.log, want) == 1);
  CHECK(strcmp(u.got, "xy") == 0);
  CHECK(mk_ground_watching(g) == 0);
  CHECK(a.destroyed == 1 && mk_vm_nprocs(vm) == 0);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  close(fds[0]);
  close(fds[1]);
  rec_done(&a);
  END;
}

/* A wake-up's consequences wait behind at most MK_GROUND_BATCH others
** (ground.h, "Delivery"; issue 10).  A reader of each of BURST pipes,
** all readable in the same poll, sends a message to one collector per
** byte it reads; when the collector gets a message, fewer than
** MK_GROUND_BATCH reads may be ahead of it.  With the VM run only after
** the whole poll, the messages of the third burst (libev's array of ready
** descriptors has grown past BURST by then) came after all BURST reads. */
#define BURST 200
static struct {
  int fds[BURST][2];
  int reads, msgs, lag;
} burst;

static void burst_reader(mk_proc *p, const mk_event *ev) {
  int i = (int)(intptr_t)mk_proc_data(p);
  char c;
  if (ev->type == MK_EV_BOOT) {
    mk_term *t = mk_rec(mk_ground_readable, mk_int(burst.fds[i][0]));
    mk_add_endpoint(p, "rd", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, t));
    mk_unref(t);
  } else if (ev->type == MK_EV_MESSAGE && read(burst.fds[i][0], &c, 1) == 1) {
    mk_term *m = R(I(i), I(0));
    burst.reads++;
    mk_send(p, m);
    mk_unref(m);
  }
}

static void burst_collector(mk_proc *p, const mk_event *ev) {
  if (ev->type == MK_EV_BOOT) {
    mk_term *t = R(W(), W());
    mk_add_endpoint(p, "in", 0, role(MK_SUBSCRIBER, MK_PARTICIPANT, t));
    mk_unref(t);
  } else if (ev->type == MK_EV_MESSAGE) {
    burst.msgs++;
    if (burst.reads - burst.msgs > burst.lag) burst.lag = burst.reads - burst.msgs;
  }
}

static const mk_behavior burst_readerb = { "reader", burst_reader, NULL, NULL, NULL, 0, NULL, NULL };
static const mk_behavior burst_collectorb = { "collector", burst_collector, NULL, NULL, NULL, 0,
                                              NULL, NULL };

static void test_ground_burst(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  int i, round, steps;
  memset(&burst, 0, sizeof burst);
  mk_vm_spawn(vm, &burst_collectorb, NULL, "collector");
  for (i = 0; i < BURST; i++) {
    CHECK(pipe(burst.fds[i]) == 0);
    mk_vm_spawn(vm, &burst_readerb, (void *)(intptr_t)i, "reader");
  }
  mk_vm_run(vm);
  CHECK(mk_ground_watching(g) == BURST);
  for (round = 1; round <= 3; round++) {
    burst.lag = 0;
    for (i = 0; i < BURST; i++) CHECK(write(burst.fds[i][1], "x", 1) == 1);
    for (steps = 0; burst.msgs < round * BURST && steps < 100; steps++) mk_ground_step(g);
    CHECK(burst.reads == round * BURST && burst.msgs == round * BURST);
  }
  CHECK(burst.lag < MK_GROUND_BATCH);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  for (i = 0; i < BURST; i++) {
    close(burst.fds[i][0]);
    close(burst.fds[i][1]);
  }
  END;
}

/* What the ground keeps per watched record: a server keeps one per
** connection (its socket's readable).  Its watch record filled a 208-byte
** malloc chunk (176 bytes at first, then 128, then 208 with its match
** slot, route.h: issue 10), and is now three cache lines of the pool's
** (ground.c), beside the ground's publisher endpoint and
** the routing index's nodes.  Here the process's subscriber endpoints and
** their topics count too: 863 bytes per alarm subscription with the
** first record, 782 with the second, 862 with the slot, 884 now (the
** subscriber endpoints placed on cache lines, vm.c).  The alarms are
** monotonic ones now, whose watcher is in the record as a socket's is (a
** wall-clock alarm's libev periodic is kept apart: 964 bytes); their
** label, 10 bytes longer than market:alarm's, makes 914 (the routing
** index's keys hold it), and the routing index's hash tables' marks,
** four bytes a slot beside each child pointer (route.c, slotsof), 947. */
static void test_ground_watch_footprint(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  rec a;
  size_t before, after;
  rec_init(&a, "A");
  rec_ctl(&a);
  a.fn = many_script;
  a.ud = NULL;
  spawn(vm, &a);
  mk_vm_run(vm);
  before = heap_in_use();
  poke(vm, "A");
  mk_vm_run(vm);
  after = heap_in_use();
  if (HEAP_COUNTED) CHECK((after - before) / MANY_EPS <= 955);
  CHECK(mk_ground_watching(g) == MANY_EPS);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  rec_done(&a);
  END;
}

static void test_ground_free_live(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  rec a, r, c, w;
  ground_ud ua, ur;
  int fds[2];
  double t0;
  mk_term *why = mk_cstr("bye");
  memset(&ua, 0, sizeof ua);
  memset(&ur, 0, sizeof ur);
  CHECK(pipe(fds) == 0);
  rec_init(&a, "A");
  rec_init(&r, "R");
  rec_init(&c, "C");
  rec_init(&w, "W");
  ua.g = g;
  ua.at = (int64_t)(ev_time() * 1000.0) + 150;
  ua.keep = 1;
  a.fn = alarm_script;
  a.ud = &ua;
  ur.g = g;
  ur.fd = fds[0];
  r.fn = readable_script;
  r.ud = &ur;
  rec_ep(&c, "up", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(3), W()), 1);
  rec_ep(&w, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(3), I(3)), 0);
  spawn(vm, &a);
  spawn(vm, &r);
  mk_vm_spawn(vm, &mk_nested_behavior, mk_nested_new(vm, &recb, &c, "child"), "nest");
  spawn(vm, &w);
  CHECK(mk_ground_step(g) != 0);
  CHECK(mk_ground_watching(g) == 2);
  CHECK(mk_vm_nprocs(vm) == 4);
  mk_ground_free(g, why);
  CHECK(a.destroyed == 1 && r.destroyed == 1 && c.destroyed == 1 && w.destroyed == 1);
  CHECK(log_count(&w.log, "absence ep subscriber/participant rec(3, 3) \"bye\"") == 1);
  /* no watcher of the freed ground is left on the loop: running it
  ** returns at once instead of waiting for the alarm */
  t0 = ev_time();
  ev_run(loop, 0);
  CHECK(ev_time() - t0 < 0.1);
  ev_loop_destroy(loop);
  close(fds[0]);
  close(fds[1]);
  mk_unref(why);
  rec_done(&a); rec_done(&r); rec_done(&c); rec_done(&w);
  END;
}

/* ---- the ground as the publisher of its events ---------------------------- */

static mk_term *Rd(int64_t fd) { return mk_rec(mk_ground_readable, mk_int(fd)); }

/* The resident process: pid 0, outside the pid table, immune to kill_all
** and to implicit exit; mk_vm_free ends it last. */
static void test_vm_resident(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec res, a;
  mk_proc *p;
  rec_init(&res, "RES");
  rec_init(&a, "A");
  p = mk_vm_resident(vm, &recb, &res, "resident");
  CHECK(p != NULL && mk_proc_pid(p) == 0);
  CHECK(mk_vm_resident(vm, &recb, &res, "again") == NULL);
  CHECK(mk_vm_nprocs(vm) == 0 && mk_vm_proc(vm, 0) == NULL && mk_vm_kill(vm, 0, NULL) == -1);
  mk_yield(p, "c");                /* its only event: no endpoints, nothing left */
  rec_ep(&a, "sub", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  CHECK(spawn(vm, &a) == 1);       /* the program's pids are as they were */
  mk_vm_run(vm);
  CHECK(log_count(&res.log, "resume c") == 1);
  CHECK(mk_proc_alive(p) && res.destroyed == 0);     /* no implicit exit */
  {
    mk_term *t = R(I(1), I(2));
    mk_add_endpoint(p, "pub", 0, role(MK_PUBLISHER, MK_PARTICIPANT, t));
    mk_unref(t);
  }
  mk_vm_run(vm);
  CHECK(log_count(&a.log, "presence sub publisher/participant rec(1, 2)") == 1);
  mk_vm_kill_all(vm, NULL);
  CHECK(a.destroyed == 1 && mk_vm_nprocs(vm) == 0);
  CHECK(mk_proc_alive(p) && mk_proc_nendpoints(p) == 1 && res.destroyed == 0);
  mk_vm_free(vm, NULL);
  CHECK(res.destroyed == 1);
  rec_done(&res); rec_done(&a);
  END;
}

/* A subscriber sees the ground's presence while the watch is on; observers
** see the ground's publishers; a record with no fields is an ordinary topic
** (it crashed the ground's check, issue 8). */
static void test_ground_publishes(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  mk_rtype *ping = mk_rtype_get("ping", 4, 0, NULL);
  rec a, o, z;
  int fds[2];
  char want[160];
  CHECK(pipe(fds) == 0);
  rec_init(&a, "A");
  rec_init(&o, "O");
  rec_init(&z, "Z");
  rec_ep(&a, "rd", MK_SUBSCRIBER, MK_PARTICIPANT, Rd(fds[0]), 0);
  rec_ep(&o, "obs", MK_SUBSCRIBER, MK_OBSERVER, mk_rec(mk_ground_readable, W()), 0);
  rec_ep(&z, "zero", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(ping), 0);
  rec_ep(&z, "zobs", MK_SUBSCRIBER, MK_OBSERVER, mk_rec(ping), 0);
  CHECK(spawn(vm, &a) == 1 && spawn(vm, &o) == 2 && spawn(vm, &z) == 3);
  CHECK(mk_ground_step(g) != 0);
  CHECK(mk_ground_watching(g) == 1 && mk_vm_nprocs(vm) == 3);
  snprintf(want, sizeof want, "presence rd publisher/participant market:readable(%d)", fds[0]);
  CHECK(log_count(&a.log, want) == 1);
  snprintf(want, sizeof want, "presence obs publisher/participant market:readable(%d)", fds[0]);
  CHECK(log_count(&o.log, want) == 1);
  CHECK(write(fds[1], "x", 1) == 1);
  CHECK(mk_ground_step(g) != 0);
  snprintf(want, sizeof want, "message rd market:readable(%d)", fds[0]);
  CHECK(log_count(&a.log, want) >= 1);
  /* The last subscriber goes: the watch stops, the ground withdraws. */
  mk_vm_kill(vm, 1, NULL);
  mk_vm_kill(vm, 3, NULL);          /* the unsubscribe path of the 0-field record */
  CHECK(mk_ground_run(g) == 0);
  snprintf(want, sizeof want, "absence obs publisher/participant market:readable(%d) nil", fds[0]);
  CHECK(log_count(&o.log, want) == 1);
  CHECK(mk_ground_watching(g) == 0);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  close(fds[0]);
  close(fds[1]);
  mk_rtype_unref(ping);
  rec_done(&a); rec_done(&o); rec_done(&z);
  END;
}

/* Records libev would assert on (or hang on) never reach it: the ground
** publishes and withdraws at once, with the reason. */
static void test_ground_invalid(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  static const struct { int kind; double v; const char *shown, *why; } bad[] = {
    { 0, -1, "market:readable(-1)", "not an open file descriptor" },
    { 1, -1, "market:writable(-1)", "not an open file descriptor" },
    { 0, 3.5, "market:readable(3.5)", "not an open file descriptor" },
    { 0, 2e9, "market:readable(2000000000)", "not an open file descriptor" },
    { 0, 2147483648.0, "market:readable(2147483648)", "not an open file descriptor" },
    { 0, 1e300, NULL, "not an open file descriptor" },
    { 2, 0, "market:signal(0)", "not a signal that can be caught" },
    { 2, NSIG, NULL, "not a signal that can be caught" },
    { 2, SIGKILL, NULL, "not a signal that can be caught" },
    { 2, 2147483648.0, "market:signal(2147483648)", "not a signal that can be caught" },
    { 2, -5, "market:signal(-5)", "not a signal that can be caught" },
    { 3, INFINITY, NULL, "not a finite time" },
  };
  enum { NBAD = sizeof bad / sizeof bad[0] };
  rec r[NBAD];
  char want[200];
  size_t i;
  for (i = 0; i < NBAD; i++) {
    mk_rtype *rt = bad[i].kind == 0 ? mk_ground_readable : bad[i].kind == 1 ? mk_ground_writable
                 : bad[i].kind == 2 ? mk_ground_signal : mk_ground_alarm;
    rec_init(&r[i], "X");
    rec_ep(&r[i], "ev", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(rt, mk_float(bad[i].v)), 0);
    spawn(vm, &r[i]);
  }
  CHECK(mk_ground_run(g) == 0);          /* nothing is watched: done at once */
  CHECK(mk_ground_watching(g) == 0);
  for (i = 0; i < NBAD; i++) {
    char *shown = mk_repr(r[i].eps[0].topic, NULL);
    if (bad[i].shown) CHECK(strcmp(shown, bad[i].shown) == 0);
    snprintf(want, sizeof want, "presence ev publisher/participant %s", shown);
    CHECK(log_find(&r[i].log, want) == 1);
    snprintf(want, sizeof want, "absence ev publisher/participant %s \"%s: %s\"",
             shown, shown, bad[i].why);
    CHECK(log_find(&r[i].log, want) == 2);
    free(shown);
  }
  /* A NaN alarm too (NaN prints as nan or -nan: compare the reason only). */
  {
    rec n;
    rec_init(&n, "N");
    rec_ep(&n, "ev", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(mk_ground_alarm, mk_float(NAN)), 0);
    spawn(vm, &n);
    CHECK(mk_ground_run(g) == 0);
    CHECK(n.log.n == 3 && strstr(n.log.v[2], "not a finite time\"") != NULL);
    mk_ground_free(g, NULL);
    rec_done(&n);
  }
  ev_loop_destroy(loop);
  for (i = 0; i < NBAD; i++) rec_done(&r[i]);
  END;
}

/* A descriptor watch whose descriptor goes: ends with the ground's absence
** and a reason, and the loop has nothing left (it used to wait for ever, or
** libev aborted the program). */
static void close_at_boot(mk_proc *p, const mk_event *ev, rec *r) {
  ground_ud *u = r->ud;
  if (ev->type == MK_EV_BOOT) close(u->fd);      /* behind market's back */
}

static void test_ground_fd_closed(void) {
  BEGIN;
  int mode;
  /* 0: closed in the turn that subscribed (before libev told the kernel);
  ** 1: closed later, found by the audit; 2: closed through market;
  ** 3: the select backend reports the bad descriptor (EV_ERROR). */
  for (mode = 0; mode < 4; mode++) {
    struct ev_loop *loop = ev_loop_new(mode == 3 ? EVBACKEND_SELECT : EVFLAG_AUTO);
    mk_ground *g = mk_ground_new(loop);
    mk_vm *vm = mk_ground_vm(g);
    rec a;
    ground_ud u;
    int fds[2];
    double t0 = ev_time();
    char want[200];
    memset(&u, 0, sizeof u);
    CHECK(pipe(fds) == 0);
    u.fd = fds[0];
    rec_init(&a, "A");
    rec_ep(&a, "rd", MK_SUBSCRIBER, MK_PARTICIPANT, Rd(fds[0]), 0);
    a.ud = &u;
    if (mode == 0) a.fn = close_at_boot;
    spawn(vm, &a);
    if (mode > 0) {
      CHECK(mk_ground_step(g) != 0);           /* watched: libev told the kernel */
      if (mode == 2) mk_ground_fd_closed(fds[0]);
      close(fds[0]);
    }
    CHECK(mk_ground_run(g) == 0);
    CHECK(ev_time() - t0 < 5);
    CHECK(mk_ground_watching(g) == 0);
    if (mode == 2)
      snprintf(want, sizeof want, "absence rd publisher/participant market:readable(%d) "
               "\"fd %d was closed\"", fds[0], fds[0]);
    else
      snprintf(want, sizeof want, "absence rd publisher/participant market:readable(%d) "
               "\"market:readable(%d): %s\"", fds[0], fds[0],
               mode == 3 ? "bad file descriptor" : "the descriptor was closed");
    CHECK(log_count(&a.log, want) == 1);
    if (check_failed_now) { fprintf(stderr, "  mode %d\n", mode); log_dump(&a.log, "A"); }
    mk_ground_free(g, NULL);
    ev_loop_destroy(loop);
    close(fds[1]);
    rec_done(&a);
  }
  END;
}

/* Both directions of one descriptor watched, the descriptor closed behind
** market's back, then one direction withdrawn: libev would change the
** kernel's interest in the closed descriptor (epoll_ctl: EBADF, an abort).
** The other direction fails instead. */
static void twin_script(mk_proc *p, const mk_event *ev, rec *r) {
  if (is_ctl(ev)) mk_delete_endpoint(p, "wr", 0, NULL);
}

static void test_ground_fd_closed_twin(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  rec a, b;
  int sv[2];
  char want[200];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "rd", MK_SUBSCRIBER, MK_PARTICIPANT, Rd(sv[0]), 0);
  rec_ep(&b, "wr", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(mk_ground_writable, mk_int(sv[0])), 0);
  rec_ctl(&b);
  b.fn = twin_script;
  spawn(vm, &a);
  spawn(vm, &b);
  CHECK(mk_ground_step(g) != 0);
  CHECK(mk_ground_watching(g) == 2);
  close(sv[0]);
  poke(vm, "B");
  CHECK(mk_ground_run(g) == 0);
  snprintf(want, sizeof want, "absence rd publisher/participant market:readable(%d) "
           "\"market:readable(%d): the descriptor was closed\"", sv[0], sv[0]);
  CHECK(log_count(&a.log, want) == 1);
  CHECK(mk_ground_watching(g) == 0);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  close(sv[1]);
  rec_done(&a); rec_done(&b);
  END;
}

/* libev watches a signal on one loop at a time (it asserts otherwise). */
static void test_ground_signal_two_loops(void) {
  BEGIN;
  struct ev_loop *l1 = ev_loop_new(EVFLAG_AUTO), *l2 = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g1 = mk_ground_new(l1), *g2 = mk_ground_new(l2);
  rec a, b;
  char want[200];
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_ep(&a, "sig", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(mk_ground_signal, mk_int(SIGUSR1)), 0);
  rec_ep(&b, "sig", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(mk_ground_signal, mk_int(SIGUSR1)), 0);
  spawn(mk_ground_vm(g1), &a);
  spawn(mk_ground_vm(g2), &b);
  CHECK(mk_ground_step(g1) != 0 && mk_ground_watching(g1) == 1);
  CHECK(mk_ground_run(g2) == 0 && mk_ground_watching(g2) == 0);
  snprintf(want, sizeof want, "absence sig publisher/participant market:signal(%d) "
           "\"market:signal(%d): watched by another event loop\"", SIGUSR1, SIGUSR1);
  CHECK(log_count(&b.log, want) == 1);
  CHECK(mk_ground_stop_on_signals(g1, 100) == 0);
  CHECK(mk_ground_stop_on_signals(g2, 100) == -1);
  CHECK(mk_ground_stop_on_signals(g1, NAN) == -1);
  mk_ground_free(g1, NULL);
  /* g1's watchers are gone: g2 may take the signals now. */
  CHECK(mk_ground_stop_on_signals(g2, 100) == 0);
  mk_ground_free(g2, NULL);
  ev_loop_destroy(l1);
  ev_loop_destroy(l2);
  rec_done(&a); rec_done(&b);
  END;
}

/* A stop: the ground publishes stopping(deadline); at the deadline every
** process left is killed with the reason; a stopping subscription alone
** keeps nothing alive. */
static void test_ground_stop(void) {
  BEGIN;
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  mk_ground *g = mk_ground_new(loop);
  mk_vm *vm = mk_ground_vm(g);
  rec a, b, s;
  ground_ud ua;
  double t0;
  memset(&ua, 0, sizeof ua);
  rec_init(&s, "S");
  rec_ep(&s, "stopping", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(mk_ground_stopping, W()), 0);
  spawn(vm, &s);
  CHECK(mk_ground_run(g) == 0);           /* watches nothing: returns at once */
  CHECK(s.log.n == 1);                    /* boot only */
  rec_init(&a, "A");
  rec_init(&b, "B");
  ua.at = (int64_t)(ev_time() * 1000.0) + 10000;
  ua.keep = 1;
  a.fn = alarm_script;                    /* holds an alarm 10 s ahead */
  a.ud = &ua;
  rec_ep(&a, "pub", MK_PUBLISHER, MK_PARTICIPANT, R(I(5), I(5)), 0);
  rec_ep(&b, "sub", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(5), W()), 0);
  spawn(vm, &a);
  spawn(vm, &b);
  CHECK(mk_ground_step(g) != 0);
  t0 = ev_time();
  mk_ground_stop(g, 50);
  mk_ground_stop(g, 0);                   /* a stop under way stays as it is */
  CHECK(mk_ground_run(g) == 0);
  CHECK(ev_time() - t0 < 5);
  CHECK(ev_time() - t0 >= 0.04);
  {
    /* S saw stopping(deadline), deadline = now + 50 ms, in whole ms */
    char *p = s.log.n > 1 ? strstr(s.log.v[1], "market:stopping(") : NULL;
    double d = p ? strtod(p + 16, NULL) : 0;
    CHECK(p != NULL && strncmp(s.log.v[1], "presence stopping publisher/participant", 39) == 0);
    CHECK(d >= floor(t0 * 1000.0) + 49 && d <= t0 * 1000.0 + 1000);
  }
  CHECK(log_count(&b.log, "absence sub publisher/participant rec(5, 5) "
                          "\"stopped: the drain time (50 ms) ran out\"") == 1);
  CHECK(a.destroyed == 1 && b.destroyed == 1 && s.destroyed == 1 && mk_vm_nprocs(vm) == 0);
  CHECK(mk_ground_exit_status(g) == 0 && mk_ground_watching(g) == 0);
  /* A process that comes later still sees the stop. */
  rec_done(&s);
  rec_init(&s, "S2");
  rec_ep(&s, "stopping", MK_SUBSCRIBER, MK_PARTICIPANT, mk_rec(mk_ground_stopping, W()), 0);
  spawn(vm, &s);
  mk_vm_run(vm);
  CHECK(log_count_prefix(&s.log, "presence stopping publisher/participant market:stopping(") == 1);
  mk_ground_free(g, NULL);
  ev_loop_destroy(loop);
  rec_done(&a); rec_done(&b); rec_done(&s);
  END;
}

/* ---- own absences, spawn continuations at meta level -------------------- */

static void delete_x_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *why;
  if (!is_ctl(ev)) return;
  why = mk_cstr("bye");
  rec_ret(r, mk_delete_endpoint(p, "x", 0, why));
  mk_unref(why);
}

/* A told behaviour's deleted endpoint hears each peer it saw go, marked,
** then MK_EV_DELETED; an untold one (the drivers) hears nothing.  (Every
** meta level: fidelity_spec.) */
static void test_delete_tells_endpoint(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec told, plain, p1, p2;
  rec_init(&told, "T");
  rec_init(&plain, "U");
  rec_init(&p1, "P1");
  rec_init(&p2, "P2");
  told.fn = plain.fn = delete_x_script;
  rec_ep(&told, "x", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ep(&plain, "x", MK_SUBSCRIBER, MK_PARTICIPANT, R(I(1), W()), 0);
  rec_ctl(&told);
  rec_ctl(&plain);
  rec_ep(&p1, "ep", MK_PUBLISHER, MK_PARTICIPANT, R(I(1), I(1)), 0);
  rec_ep(&p2, "ep", MK_PUBLISHER, MK_OBSERVER, R(I(1), I(2)), 0);
  spawn(vm, &p1);
  spawn(vm, &p2);
  mk_vm_spawn(vm, &toldb, &told, "T");
  spawn(vm, &plain);
  mk_vm_run(vm);
  poke(vm, "T");
  poke(vm, "U");
  mk_vm_run(vm);
  CHECK(told.nret == 1 && told.ret[0] == 0 && plain.nret == 1 && plain.ret[0] == 0);
  CHECK(log_count(&told.log, "absence x publisher/participant rec(1, 1) \"bye\" (deleted)") == 1);
  /* It never saw the observer P2, so it is not told of it. */
  CHECK(log_count_prefix(&told.log, "absence") == 1);
  CHECK(log_count(&told.log, "deleted x") == 1);
  CHECK(log_find(&told.log, "deleted x") == (int)told.log.n - 1);
  CHECK(log_count_prefix(&plain.log, "absence") == 0);
  CHECK(log_count_prefix(&plain.log, "deleted") == 0);
  /* The peers hear of both, as always. */
  CHECK(log_count_prefix(&p1.log, "absence") == 2);
  CHECK(log_count_prefix(&p2.log, "absence") == 2);
  mk_vm_free(vm, NULL);
  rec_done(&told);
  rec_done(&plain);
  rec_done(&p1);
  rec_done(&p2);
  END;
}

static void spawn_up_script(mk_proc *p, const mk_event *ev, rec *r) {
  if (ev->type != MK_EV_BOOT) return;
  rec_ret(r, mk_at_meta_level(p, meta_list(mk_action_spawn_k(&recb, r->ud, "up", "tok"))));
}

/* mk_action_spawn_k two VMs up: the child starts in the ground VM and the
** token comes back to the asker, inside, with the child's ground pid. */
static void test_meta_spawn_k(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec asker, child;
  rec_init(&asker, "A");
  rec_init(&child, "C");
  asker.fn = spawn_up_script;
  asker.ud = &child;
  rec_ctl(&asker);                     /* keeps it alive after */
  rec_ctl(&child);
  mk_vm_spawn(vm, &mk_nested_behavior,
              mk_nested_new(vm, &mk_nested_behavior, mk_nested_new(NULL, &recb, &asker, "A"),
                            "n2"), "n1");
  mk_vm_run(vm);
  CHECK(asker.nret == 1 && asker.ret[0] == 0);
  CHECK(child.boots == 1 && strcmp(child.path, "ground") == 0);
  CHECK(log_count(&asker.log, "spawned tok") == 1);
  CHECK(asker.spawned == child.pid && child.pid == 2);
  mk_vm_free(vm, NULL);
  rec_done(&asker);
  rec_done(&child);
  END;
}

/* ---- lifelines (vm.h) ---------------------------------------------------- */

static mk_rtype *LIFE;
static mk_term *Life(int64_t pid) { return mk_rec(LIFE, I(pid)); }

/* On ctl: mode 0 deletes its endpoint "ctl" (and then holds only its
** lifeline), mode 1 fails with "boom"; both try to delete the lifeline
** first, which a process cannot. */
static void life_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  rec_ret(r, mk_delete_endpoint(p, MK_LIFELINE_ENDPOINT, 0, NULL));
  if (r->mode == 0) { rec_ret(r, mk_delete_endpoint(p, "ctl", 0, NULL)); return; }
  t = mk_cstr("boom");
  mk_fail(p, t);
  mk_unref(t);
}

/* Subscribing to lifeline(pid) makes the VM publish it from that process,
** once however many ask; it goes with the process and its reason, does
** not keep it alive and hears nothing; a pid that names nobody is told
** at once. */
static void test_lifelines(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b, m, m2, w, x;
  mk_term *t;
  rec_init(&a, "A");
  rec_init(&b, "B");
  rec_init(&m, "M");
  rec_init(&m2, "M2");
  rec_init(&w, "W");
  rec_init(&x, "X");
  rec_ctl(&a);
  a.fn = life_script;
  rec_ctl(&b);
  b.fn = life_script;
  b.mode = 1;
  spawn(vm, &a);
  spawn(vm, &b);
  mk_vm_run(vm);
  /* nobody asked: no lifeline */
  CHECK(mk_proc_nendpoints(mk_vm_proc(vm, a.pid)) == 1);
  /* a participant wildcard subscriber, so that the lifeline would have
  ** peers to hear of if it heard anything */
  rec_ep(&w, "all", MK_SUBSCRIBER, MK_PARTICIPANT, W(), 0);
  spawn(vm, &w);
  rec_ep(&m, "la", MK_SUBSCRIBER, MK_OBSERVER, Life((int64_t)a.pid), 0);
  rec_ep(&m, "lb", MK_SUBSCRIBER, MK_OBSERVER, Life((int64_t)b.pid), 0);
  rec_ep(&m, "none", MK_SUBSCRIBER, MK_OBSERVER, Life(999), 0);
  rec_ep(&m, "any", MK_SUBSCRIBER, MK_OBSERVER, mk_rec(LIFE, W()), 0);
  spawn(vm, &m);
  rec_ep(&m2, "la", MK_SUBSCRIBER, MK_OBSERVER, Life((int64_t)a.pid), 0);
  spawn(vm, &m2);
  mk_vm_run(vm);
  /* one lifeline, however many ask; not among A's own endpoints */
  CHECK(mk_vm_proc(vm, a.pid) != NULL && mk_proc_nendpoints(mk_vm_proc(vm, a.pid)) == 1);
  CHECK(log_count(&m.log, "presence la publisher/participant market:lifeline(1)") == 1);
  CHECK(log_count(&m2.log, "presence la publisher/participant market:lifeline(1)") == 1);
  CHECK(log_count(&m.log, "presence lb publisher/participant market:lifeline(2)") == 1);
  CHECK(log_count(&m.log, "presence none publisher/participant market:lifeline(999)") == 1);
  CHECK(log_count(&m.log, "absence none publisher/participant market:lifeline(999) \"no such process\"") == 1);
  /* the wildcard asks for nothing, and sees what others asked for */
  CHECK(log_count_prefix(&m.log, "presence any") == 2);
  CHECK(log_count_prefix(&w.log, "presence all publisher/participant market:lifeline") == 2);
  CHECK(log_count_prefix(&a.log, "presence") == 0 && log_count_prefix(&b.log, "presence") == 0);
  t = Life((int64_t)a.pid);                 /* feedback reaches publishers, */
  mk_vm_send(vm, t, 1);
  mk_unref(t);
  mk_vm_run(vm);
  CHECK(log_count_prefix(&a.log, "message") == 0);   /* but not a lifeline */
  /* A holds only its lifeline after its delete: it has finished, and is
  ** seen to end normally */
  poke(vm, "A");
  mk_vm_run(vm);
  CHECK(a.nret == 2 && a.ret[0] == -1 && a.ret[1] == 0);
  CHECK(a.destroyed == 1 && mk_vm_proc(vm, a.pid) == NULL);
  CHECK(log_count(&m.log, "absence la publisher/participant market:lifeline(1) nil") == 1);
  CHECK(log_count(&m2.log, "absence la publisher/participant market:lifeline(1) nil") == 1);
  poke(vm, "B");
  mk_vm_run(vm);
  CHECK(b.nret == 1 && b.ret[0] == -1 && b.destroyed == 1);
  CHECK(log_count(&m.log, "absence lb publisher/participant market:lifeline(2) \"boom\"") == 1);
  /* asking again for a pid that ended: told at once */
  t = Life((int64_t)a.pid);
  rec_ep(&x, "again", MK_SUBSCRIBER, MK_PARTICIPANT, t, 0);
  spawn(vm, &x);
  mk_vm_run(vm);
  CHECK(log_count(&x.log, "absence again publisher/participant market:lifeline(1) \"no such process\"") == 1);
  mk_vm_free(vm, NULL);
  rec_done(&a); rec_done(&b); rec_done(&m); rec_done(&m2); rec_done(&w); rec_done(&x);
  END;
}

/* On ctl: links itself to r->num when r->mode is 1, withdraws its ctl
** (then holds only its lifeline, or its link), and adds an endpoint named
** as the one it still holds (r->ud), with another role. */
static void clash_script(mk_proc *p, const mk_event *ev, rec *r) {
  mk_term *t;
  if (!is_ctl(ev)) return;
  if (r->mode == 1) rec_ret(r, mk_link(p, (mk_pid)r->num, 0));
  rec_ret(r, mk_delete_endpoint(p, "ctl", 0, NULL));
  t = mk_cstr("elsewhere");
  rec_ret(r, mk_add_endpoint(p, r->ud, 0, role(MK_PUBLISHER, MK_PARTICIPANT, t)));
  mk_unref(t);
}

/* A process whose own endpoints are all gone still holds its lifeline or
** its links: an endpoint added under one of their names is one re-added
** with a different role, which kills it (mk_add_endpoint looks names up
** only when the process holds any endpoint at all). */
static void test_readd_held_name(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, l, m, t;
  char link[64];
  rec_init(&a, "A");
  rec_init(&l, "L");
  rec_init(&m, "M");
  rec_init(&t, "T");
  rec_ctl(&t);
  spawn(vm, &t);                                    /* 1: L's link's end */
  rec_ctl(&a); a.fn = clash_script; a.ud = (void *)MK_LIFELINE_ENDPOINT;
  spawn(vm, &a);                                    /* 2 */
  snprintf(link, sizeof link, MK_LINK_ENDPOINT "/1");
  rec_ctl(&l); l.fn = clash_script; l.mode = 1; l.num = 1; l.ud = link;
  spawn(vm, &l);                                    /* 3 */
  rec_ep(&m, "a", MK_SUBSCRIBER, MK_OBSERVER, Life(2), 0);
  rec_ep(&m, "l", MK_SUBSCRIBER, MK_OBSERVER, Life(3), 0);
  spawn(vm, &m);
  mk_vm_run(vm);
  poke(vm, "A"); poke(vm, "L");
  mk_vm_run(vm);
  CHECK(a.nret == 2 && a.ret[0] == 0 && a.ret[1] == -1 && a.destroyed == 1);
  CHECK(log_count(&m.log, "absence a publisher/participant market:lifeline(2) "
                          "\"endpoint 'market:lifeline' re-added with a different role\"") == 1);
  CHECK(l.nret == 3 && l.ret[0] == 0 && l.ret[1] == 0 && l.ret[2] == -1 && l.destroyed == 1);
  CHECK(log_count(&m.log, "absence l publisher/participant market:lifeline(3) "
                          "\"endpoint 'market:link/1' re-added with a different role\"") == 1);
  mk_vm_free(vm, NULL);
  rec_done(&a); rec_done(&l); rec_done(&m); rec_done(&t);
  END;
}

/* ---- links (vm.h) ---------------------------------------------------------- */

/* On ctl, by mode: 0 links itself to pid r->num and tries to delete the
** link; 1 links process r->ud (a rec) to r->num; 2 links itself to
** r->num and withdraws its ctl (then holds only the link); 3 quits with
** "bye"; 4 quits normally. */
static void link_script(mk_proc *p, const mk_event *ev, rec *r) {
  char name[64];
  mk_term *t;
  if (!is_ctl(ev)) return;
  switch (r->mode) {
    case 0:
      rec_ret(r, mk_link(p, (mk_pid)r->num, 0));
      rec_ret(r, mk_link(p, (mk_pid)r->num, 0));          /* again: nothing new */
      snprintf(name, sizeof name, MK_LINK_ENDPOINT "/%lld", (long long)r->num);
      rec_ret(r, mk_delete_endpoint(p, name, 0, NULL));
      break;
    case 1:
      rec_ret(r, mk_link(p, (mk_pid)r->num, ((rec *)r->ud)->pid));
      rec_ret(r, mk_link(p, (mk_pid)r->num, 999));         /* nobody to link */
      break;
    case 2:
      rec_ret(r, mk_link(p, (mk_pid)r->num, 0));
      rec_ret(r, mk_delete_endpoint(p, "ctl", 0, NULL));
      break;
    case 3: t = mk_cstr("bye"); mk_quit(p, 0, t); mk_unref(t); break;
    default: mk_quit(p, 0, NULL); break;
  }
}

/* A trace line without its time ("2026-12-01T08:00:00.123Z "). */
static void trace_to_log(void *ud, const char *line) {
  CHECK(strlen(line) > 25 && line[10] == 'T' && line[23] == 'Z' && line[24] == ' ');
  log_add(ud, line + 25);
}

/* A process linked to another ends when it does, whatever the reason,
** with a reason naming it; the link is not its own endpoint (it does not
** keep it alive, hears nothing, cannot be deleted); a link to nobody kills
** at once; links do not fire while the VM is emptied. */
static void test_links(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec t, t2, l, l2, l3, k, m, n;
  strlog trace;
  char want[200];
  memset(&trace, 0, sizeof trace);
  rec_init(&t, "T");
  rec_init(&t2, "T2");
  rec_init(&l, "L");
  rec_init(&l2, "L2");
  rec_init(&l3, "L3");
  rec_init(&k, "K");
  rec_init(&m, "M");
  rec_init(&n, "N");
  rec_ctl(&t); t.fn = link_script; t.mode = 3;
  rec_ctl(&t2); t2.fn = link_script; t2.mode = 4;
  spawn(vm, &t);                                    /* 1 */
  spawn(vm, &t2);                                   /* 2 */
  rec_ctl(&l); l.fn = link_script; l.mode = 0; l.num = 1;
  rec_ctl(&l2);                                     /* linked by K */
  rec_ctl(&l3); l3.fn = link_script; l3.mode = 2; l3.num = 2;
  rec_ctl(&k); k.fn = link_script; k.mode = 1; k.num = 1; k.ud = &l2;
  rec_ctl(&n); n.fn = link_script; n.mode = 0; n.num = 999;
  spawn(vm, &l);                                    /* 3 */
  spawn(vm, &l2);                                   /* 4 */
  spawn(vm, &l3);                                   /* 5 */
  spawn(vm, &k);                                    /* 6 */
  spawn(vm, &n);                                    /* 7 */
  rec_ep(&m, "l", MK_SUBSCRIBER, MK_OBSERVER, Life(3), 0);
  rec_ep(&m, "l2", MK_SUBSCRIBER, MK_OBSERVER, Life(4), 0);
  rec_ep(&m, "l3", MK_SUBSCRIBER, MK_OBSERVER, Life(5), 0);
  rec_ep(&m, "n", MK_SUBSCRIBER, MK_OBSERVER, Life(7), 0);
  spawn(vm, &m);
  mk_vm_run(vm);
  poke(vm, "L"); poke(vm, "K"); poke(vm, "L3"); poke(vm, "N");
  mk_vm_run(vm);
  /* made, once, not deletable, not among L's endpoints, heard by nobody */
  CHECK(l.nret == 3 && l.ret[0] == 0 && l.ret[1] == 0 && l.ret[2] == -1);
  CHECK(mk_proc_nendpoints(mk_vm_proc(vm, 3)) == 1);
  CHECK(log_count_prefix(&l.log, "presence") == 0 && log_count_prefix(&l.log, "absence") == 0);
  CHECK(k.nret == 2 && k.ret[0] == 0 && k.ret[1] == -1);
  CHECK(mk_vm_proc(vm, 6) != NULL);                 /* K links L2, and lives on */
  /* L3 holds only its link: it has finished, normally */
  CHECK(l3.nret == 2 && l3.ret[1] == 0 && l3.destroyed == 1);
  CHECK(log_count(&m.log, "absence l3 publisher/participant market:lifeline(5) nil") == 1);
  /* a link to nobody kills at once: the next call finds N dead */
  CHECK(n.nret == 3 && n.ret[0] == 0 && n.ret[1] == -1 && n.destroyed == 1);
  CHECK(log_count(&m.log, "absence n publisher/participant market:lifeline(7) "
                          "\"linked process 999 ended: \\\"no such process\\\"\"") == 1);
  /* T ends: L and L2 go, with a reason that names it */
  poke(vm, "T");
  mk_vm_run(vm);
  CHECK(l.destroyed == 1 && l2.destroyed == 1 && mk_vm_proc(vm, 6) != NULL);
  CHECK(log_count(&m.log, "absence l publisher/participant market:lifeline(3) "
                          "\"linked process 1 ended: \\\"bye\\\"\"") == 1);
  CHECK(log_count(&m.log, "absence l2 publisher/participant market:lifeline(4) "
                          "\"linked process 1 ended: \\\"bye\\\"\"") == 1);
  CHECK(log_count_prefix(&l.log, "absence") == 0);  /* the kill ran no handler */
  /* a normal end goes down links too; emptying the VM fires none */
  rec_done(&l); rec_init(&l, "L"); rec_ctl(&l); l.fn = link_script; l.num = 2;
  spawn(vm, &l);                                    /* 9, linked to T2 */
  mk_vm_run(vm);
  poke(vm, "L");
  mk_vm_run(vm);
  rec_done(&l2); rec_init(&l2, "L2");
  rec_ep(&l2, "ll", MK_SUBSCRIBER, MK_OBSERVER, Life(9), 0);
  spawn(vm, &l2);
  mk_vm_run(vm);
  poke(vm, "T2");
  mk_vm_run(vm);
  CHECK(l.destroyed == 1);
  CHECK(log_count(&l2.log, "absence ll publisher/participant market:lifeline(9) "
                           "\"linked process 2 ended: nil\"") == 1);
  rec_done(&l); rec_init(&l, "L"); rec_ctl(&l); l.fn = link_script; l.num = 6;
  spawn(vm, &l);                                    /* 11, linked to K (6) */
  mk_vm_run(vm);
  poke(vm, "L");
  mk_vm_run(vm);
  mk_vm_set_trace(vm, trace_to_log, &trace);
  {
    mk_term *why = mk_cstr("stop");
    mk_vm_kill_all(vm, why);
    mk_unref(why);
  }
  snprintf(want, sizeof want, "%s #11 L: quit \"stop\"", mk_vm_path(vm));
  CHECK(l.destroyed == 1 && log_count(&trace, want) == 1);
  mk_vm_set_trace(vm, NULL, NULL);
  mk_vm_free(vm, NULL);
  log_free(&trace);
  rec_done(&t); rec_done(&t2); rec_done(&l); rec_done(&l2); rec_done(&l3);
  rec_done(&k); rec_done(&m); rec_done(&n);
  END;
}

static void ring_to_log(void *ud, const char *line) { log_add(ud, line); }

/* Rings (vm.h): JSON lines of their own filter, bounded, read and let go
** of, several at once beside the trace and without one, none once closed. */
static void test_rings(void) {
  BEGIN;
  mk_vm *vm = mk_vm_new();
  rec a, b;
  strlog got, got2;
  mk_trace_opts o;
  mk_ring *r, *all;
  memset(&got, 0, sizeof got);
  memset(&got2, 0, sizeof got2);
  memset(&o, 0, sizeof o);
  errno = 0;
  CHECK(mk_vm_ring_open(vm, NULL, 0) == NULL && errno == EINVAL);
  o.kinds = 1u << MK_TK_COUNT;
  CHECK(mk_vm_ring_open(vm, &o, 5) == NULL && errno == EINVAL);
  o.kinds = 1u << MK_TK_ADD;
  r = mk_vm_ring_open(vm, &o, 2);
  all = mk_vm_ring_open(vm, NULL, 100);
  CHECK(r != NULL && all != NULL && mk_vm_trace_fn(vm, NULL) == NULL);
  rec_init(&a, "A");
  rec_ep(&a, "x", MK_SUBSCRIBER, MK_PARTICIPANT, mk_cstr("x"), 0);
  rec_ep(&a, "y", MK_SUBSCRIBER, MK_PARTICIPANT, mk_cstr("y"), 0);
  rec_ep(&a, "z", MK_SUBSCRIBER, MK_PARTICIPANT, mk_cstr("z"), 0);
  spawn(vm, &a);
  mk_vm_run(vm);
  /* three adds, two kept: the first was dropped */
  CHECK(mk_ring_read(r, ring_to_log, &got) == 1 && got.n == 2);
  CHECK(got.n == 2 && strstr(got.v[0], "\"kind\":\"add\",\"endpoint\":\"y\"") != NULL);
  CHECK(got.n == 2 && got.v[1][0] == '{' && strstr(got.v[1], "\"endpoint\":\"z\"") != NULL);
  CHECK(mk_ring_read(r, ring_to_log, &got) == 0 && got.n == 2);
  CHECK(mk_ring_read(all, ring_to_log, &got2) == 0 && log_count_prefix(&got2, "{\"time\":") >= 4);
  mk_ring_close(r);
  mk_ring_close(NULL);
  rec_init(&b, "B");
  rec_ep(&b, "w", MK_SUBSCRIBER, MK_PARTICIPANT, mk_cstr("w"), 0);
  spawn(vm, &b);
  mk_vm_run(vm);
  CHECK(mk_ring_read(all, NULL, NULL) == 0);
  mk_ring_close(all);
  CHECK(!MKI_TRACING(vm));             /* nothing left: the VM makes no line */
  /* a ring outlives its VM, and gets nothing more */
  all = mk_vm_ring_open(vm, NULL, 10);
  mk_vm_free(vm, NULL);
  log_free(&got2);
  CHECK(mk_ring_read(all, ring_to_log, &got2) == 0);
  mk_ring_close(all);
  log_free(&got);
  log_free(&got2);
  rec_done(&a);
  rec_done(&b);
  END;
}

int main(void) {
  int rc;
  alarm(60);   /* a hang is a failure, not a stuck CI job */
  RT2 = mk_rtype_get("rec", 3, 2, NULL);
  CTL = mk_rtype_get("ctl", 3, 1, NULL);
  LIFE = mk_rtype_get(MK_LIFELINE_LABEL, sizeof MK_LIFELINE_LABEL - 1, 1, NULL);
  RUN(test_visibility_matrix);
  RUN(test_presence_refined_topic);
  RUN(test_presence_shared_intersection);
  RUN(test_absence_refined_and_reason);
  RUN(test_edges_not_counts);
  RUN(test_same_process_endpoints);
  RUN(test_send_and_feedback);
  RUN(test_endpoint_tags);
  RUN(test_endpoint_footprint);
  RUN(test_declined_events);
  RUN(test_declined_at_activation_end);
  RUN(test_proc_next);
  RUN(test_no_buffering);
  RUN(test_wildcard_in_message);
  RUN(test_readd_endpoint);
  RUN(test_quit_drops_rest);
  RUN(test_quit_other_pid);
  RUN(test_implicit_exit);
  RUN(test_spawn_continuation);
  RUN(test_yield);
  RUN(test_event_order);
  RUN(test_queue_blocks);
  RUN(test_queue_unmapped);
  RUN(test_memory_charge);
  RUN(test_meta_above_ground_fails);
  RUN(test_meta_nested_deep_fails);
  RUN(test_send_unbuilt);
  RUN(test_run_for);
  RUN(test_nested_meta_message);
  RUN(test_nested_two_levels);
  RUN(test_nested_meta_delete);
  RUN(test_nested_exit_quits_parent_process);
  RUN(test_nested_local_only_stays);
  RUN(test_nested_child_crash_drops_meta_endpoints);
  RUN(test_vm_free_live);
  RUN(test_ground_alarm);
  RUN(test_ground_nested_alarm);
  RUN(test_ground_timeouts);
  RUN(test_process_footprint);
  RUN(test_pid_table);
  RUN(test_pid_table_shared_slots);
  RUN(test_records_reused);
  RUN(test_ground_readable);
  RUN(test_ground_burst);
  RUN(test_ground_watch_footprint);
  RUN(test_ground_free_live);
  RUN(test_vm_resident);
  RUN(test_ground_publishes);
  RUN(test_ground_invalid);
  RUN(test_ground_fd_closed);
  RUN(test_ground_fd_closed_twin);
  RUN(test_ground_signal_two_loops);
  RUN(test_ground_stop);
  RUN(test_ground_settle);
  RUN(test_delete_tells_endpoint);
  RUN(test_meta_spawn_k);
  RUN(test_route_cache);
  RUN(test_lifelines);
  RUN(test_readd_held_name);
  RUN(test_links);
  RUN(test_prefetch);
  RUN(test_rings);
  mk_rtype_unref(RT2);
  mk_rtype_unref(LIFE);
  mk_rtype_unref(CTL);
  log_free(&glog);
  rc = CHECK_DONE();
  return rc;
}

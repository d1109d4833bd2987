/*
** test_index.c: the routing index, by directed cases and by a randomised
** cross-check against a linear scan with mk_unifies.
*/

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "heap.h"
#include "naive_index.h"
#include "route.h"

#include "termlit.h"

/* An equal but separately built copy of t. */
static mk_term *P_copy (const mk_term *t) {
  char *s = mk_repr(t, NULL);
  mk_term *c = P(s);
  free(s);
  return c;
}

/*
** {======================================================
** Items and match collection
** =======================================================
*/

static Item *mkitems (int n, const char *const *topics) {
  Item *items = calloc((size_t)n, sizeof(Item));
  int i;
  for (i = 0; i < n; i++) {
    items[i].id = i;
    items[i].topic = topics ? P(topics[i]) : NULL;
  }
  return items;
}

static void freeitems (Item *items, int n) {
  int i;
  for (i = 0; i < n; i++) mk_unref(items[i].topic);
  free(items);
}

static void addall (mk_index *ix, Item *items, int n) {
  int i;
  for (i = 0; i < n; i++) CHECK(mk_index_add(ix, items[i].topic, &items[i].link) == 0);
}

/*
** Match `query` and compare with `want`, a string of item ids ("0 3 4",
** any order).  Every item must be seen once or not at all.  With `hit`,
** set *hit when the answer came from what the cache kept before: the
** query is parsed afresh, so a walk, or a slot filled from the table,
** would take a reference to its first item to keep (a key the walk reads).
*/
static int matches_hit (mk_index *ix, mk_match_slot *slot, Item *items, int n,
                        const char *query, const char *want, int *hit) {
  mk_term *q = P(query);
  Coll c = { 0, 0 };
  size_t got;
  uint32_t refs = hit != NULL ? mk_items(q)[0]->refs : 0;
  int i, ok = 1, expect = 0;
  char *mark = calloc((size_t)n, 1);
  const char *w = want;
  while (*w) {
    char *end;
    long id = strtol(w, &end, 10);
    if (end == w) break;
    mark[id] = 1;
    expect++;
    w = end;
  }
  for (i = 0; i < n; i++) items[i].seen = 0;
  got = slot ? mk_index_match_slot(ix, slot, q, collect, &c)
             : mk_index_match(ix, q, collect, &c);
  ok = got == (size_t)expect && c.calls == expect;
  for (i = 0; i < n; i++) ok &= items[i].seen == mark[i];
  if (hit != NULL) *hit = mk_items(q)[0]->refs == refs;
  if (!ok) {
    fprintf(stderr, "  match %s: want {%s}, got {", query, want);
    for (i = 0; i < n; i++) if (items[i].seen) fprintf(stderr, " %d(x%d)", i, items[i].seen);
    fprintf(stderr, " }\n");
  }
  free(mark);
  mk_unref(q);
  return ok;
}

static int matches_slot (mk_index *ix, mk_match_slot *slot, Item *items, int n,
                         const char *query, const char *want) {
  return matches_hit(ix, slot, items, n, query, want, NULL);
}

static int matches (mk_index *ix, Item *items, int n, const char *query,
                    const char *want) {
  return matches_slot(ix, NULL, items, n, query, want);
}

/* }====================================================== */

/*
** {======================================================
** Directed tests
** =======================================================
*/

static void basic (void) {
  static const char *const t[] = { "f(1)", "f(2)", "g(1)", "\"x\"", "[1, 2]", "nil" };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(6, t);
  CHECK(mk_index_count(ix) == 0 && mk_index_nodes(ix) == 1);
  addall(ix, it, 6);
  CHECK(mk_index_count(ix) == 6);
  CHECK(it[0].link.leaf != NULL);
  CHECK(matches(ix, it, 6, "f(1)", "0"));
  CHECK(matches(ix, it, 6, "f(2)", "1"));
  CHECK(matches(ix, it, 6, "f(3)", ""));
  CHECK(matches(ix, it, 6, "g(1)", "2"));
  CHECK(matches(ix, it, 6, "g(1, 2)", ""));
  CHECK(matches(ix, it, 6, "\"x\"", "3"));
  CHECK(matches(ix, it, 6, "\"y\"", ""));
  CHECK(matches(ix, it, 6, "[1, 2]", "4"));
  CHECK(matches(ix, it, 6, "[1, 2, 3]", ""));
  CHECK(matches(ix, it, 6, "[1]", ""));
  CHECK(matches(ix, it, 6, "nil", "5"));
  CHECK(matches(ix, it, 6, "false", ""));
  CHECK(matches(ix, it, 6, "f(1.0)", "0"));   /* 1.0 is 1 */
  mk_index_remove(ix, &it[0].link);
  CHECK(it[0].link.leaf == NULL && mk_index_count(ix) == 5);
  CHECK(matches(ix, it, 6, "f(1)", ""));
  CHECK(matches(ix, it, 6, "f(2)", "1"));
  mk_index_remove(ix, &it[0].link);            /* not indexed: no-op */
  CHECK(mk_index_count(ix) == 5);
  mk_index_free(ix);
  /* freeing unlinks what is left */
  CHECK(it[1].link.leaf == NULL && it[5].link.leaf == NULL);
  freeitems(it, 6);
  CHECK(mk_term_live() == base);
}

/* The index keeps what it needs of a topic: the caller may drop it. */
static void borrowed_topics (void) {
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item it[2];
  mk_term *t = P("chat(\"bob\", [1.5, \"hi\"])"), *q;
  Coll c = { 0, 0 };
  memset(it, 0, sizeof it);
  CHECK(mk_index_add(ix, t, &it[0].link) == 0);
  mk_unref(t);
  t = P("other(\"carol\", _)");
  CHECK(mk_index_add(ix, t, &it[1].link) == 0);
  mk_unref(t);
  CHECK(mk_term_live() > base);   /* the index holds the atoms */
  q = P("chat(\"bob\", [1.5, \"hi\"])");
  CHECK(mk_index_match(ix, q, collect, &c) == 1 && it[0].seen == 1);
  mk_unref(q);
  q = P("other(_, 7)");
  CHECK(mk_index_match(ix, q, collect, &c) == 1 && it[1].seen == 1);
  CHECK(mk_index_match(ix, q, collect, &c) == 1 && it[1].seen == 2);
  mk_unref(q);
  /* The match cache holds items of the queries it keeps, and lets them
  ** go when the index is empty. */
  mk_index_remove(ix, &it[0].link);
  mk_index_remove(ix, &it[1].link);
  CHECK(mk_term_live() == base);
  mk_index_free(ix);
  CHECK(mk_term_live() == base);
}

static void topic_wild (void) {
  static const char *const t[] = {
    "f(_)", "_", "f(1)", "[_, 2]", "[_, _]", "f(g(_, 1))", "f(g(2, _))",
    "h(_, [_, x()], _)",
  };
  enum { N = sizeof t / sizeof t[0] };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(N, t);
  addall(ix, it, N);
  CHECK(matches(ix, it, N, "f(1)", "0 1 2"));
  CHECK(matches(ix, it, N, "f(2)", "0 1"));
  CHECK(matches(ix, it, N, "f([1, 2])", "0 1"));
  CHECK(matches(ix, it, N, "[1, 2]", "1 3 4"));
  CHECK(matches(ix, it, N, "[1, 3]", "1 4"));
  CHECK(matches(ix, it, N, "[1]", "1"));
  CHECK(matches(ix, it, N, "f(g(2, 1))", "0 1 5 6"));
  CHECK(matches(ix, it, N, "f(g(3, 1))", "0 1 5"));
  CHECK(matches(ix, it, N, "f(g(2, 2))", "0 1 6"));
  CHECK(matches(ix, it, N, "h(1, [2, x()], 3)", "1 7"));
  CHECK(matches(ix, it, N, "h(1, [2, y()], 3)", "1"));
  CHECK(matches(ix, it, N, "#eof", "1"));
  mk_index_free(ix);
  freeitems(it, N);
  CHECK(mk_term_live() == base);
}

static void query_wild (void) {
  static const char *const t[] = {
    "f(1)", "f(2)", "g(1)", "[1, 2]", "[f(1), 2]", "\"x\"", "f(1, 2)",
    "[]", "[[1, [2, 3]], 4]", "k(f(1), [2, g(3)], 4)",
  };
  enum { N = sizeof t / sizeof t[0] };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(N, t);
  addall(ix, it, N);
  CHECK(matches(ix, it, N, "_", "0 1 2 3 4 5 6 7 8 9"));
  CHECK(matches(ix, it, N, "f(_)", "0 1"));
  CHECK(matches(ix, it, N, "f(_, _)", "6"));
  CHECK(matches(ix, it, N, "[_, 2]", "3 4"));
  CHECK(matches(ix, it, N, "[f(_), _]", "4"));
  CHECK(matches(ix, it, N, "[_, _]", "3 4 8"));
  CHECK(matches(ix, it, N, "[_, 4]", "8"));
  CHECK(matches(ix, it, N, "[[_, _], _]", "8"));
  CHECK(matches(ix, it, N, "[[_, [_, 3]], _]", "8"));
  CHECK(matches(ix, it, N, "[[_, [_, 4]], _]", ""));
  CHECK(matches(ix, it, N, "k(_, _, 4)", "9"));
  CHECK(matches(ix, it, N, "k(_, [_, _], _)", "9"));
  CHECK(matches(ix, it, N, "k(_, [_, g(_)], 4)", "9"));
  CHECK(matches(ix, it, N, "k(_, [_, g(_)], 5)", ""));
  CHECK(matches(ix, it, N, "k(_, [_], _)", ""));
  CHECK(matches(ix, it, N, "[]", "7"));
  CHECK(matches(ix, it, N, "[_]", ""));
  mk_index_free(ix);
  freeitems(it, N);
  CHECK(mk_term_live() == base);
}

static void both_wild (void) {
  static const char *const t[] = {
    "f(_, 1)", "f(2, _)", "f(_, _)", "f(g(_), 3)", "_", "f([_, 1], _)",
  };
  enum { N = sizeof t / sizeof t[0] };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(N, t);
  addall(ix, it, N);
  CHECK(matches(ix, it, N, "f(_, 1)", "0 1 2 4 5"));
  CHECK(matches(ix, it, N, "f(g(5), _)", "0 2 3 4"));
  CHECK(matches(ix, it, N, "f(_, 3)", "1 2 3 4 5"));
  CHECK(matches(ix, it, N, "f([_, _], 2)", "2 4 5"));
  CHECK(matches(ix, it, N, "f([2, _], 2)", "2 4 5"));
  CHECK(matches(ix, it, N, "f([2, 2], 2)", "2 4"));
  CHECK(matches(ix, it, N, "f(2, 2)", "1 2 4"));
  CHECK(matches(ix, it, N, "_", "0 1 2 3 4 5"));
  CHECK(matches(ix, it, N, "g(_)", "4"));
  mk_index_free(ix);
  freeitems(it, N);
  CHECK(mk_term_live() == base);
}

/* Equal topics share a leaf and report in insertion order. */
static void leaf_order (void) {
  enum { N = 6 };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(N, NULL);
  mk_term *q = P("m(1, _)");
  Coll c = { 0, 0 };
  int i;
  for (i = 0; i < N; i++) it[i].topic = P("m(1, [\"a\"])");   /* equal, not shared */
  addall(ix, it, N);
  CHECK(mk_index_nodes(ix) == 1 + 1);   /* the root and one leaf */
  CHECK(mk_index_match(ix, q, collect, &c) == N);
  for (i = 0; i < N; i++) CHECK(it[i].seen == 1 && it[i].order == i);
  /* remove from the middle and both ends, then re-add one: it goes last */
  mk_index_remove(ix, &it[2].link);
  mk_index_remove(ix, &it[0].link);
  mk_index_remove(ix, &it[5].link);
  CHECK(mk_index_add(ix, it[2].topic, &it[2].link) == 0);
  for (i = 0; i < N; i++) it[i].seen = 0;
  c.calls = 0;
  CHECK(mk_index_match(ix, q, collect, &c) == 4);
  CHECK(it[1].order == 0 && it[3].order == 1 && it[4].order == 2 && it[2].order == 3);
  CHECK(it[0].seen == 0 && it[5].seen == 0);
  /* adding an indexed item again moves it (here: to the end of its leaf) */
  CHECK(mk_index_add(ix, it[1].topic, &it[1].link) == 0);
  CHECK(mk_index_count(ix) == 4);
  c.calls = 0;
  mk_index_match(ix, q, collect, &c);
  CHECK(it[3].order == 0 && it[4].order == 1 && it[2].order == 2 && it[1].order == 3);
  mk_unref(q);
  mk_index_free(ix);
  freeitems(it, N);
  CHECK(mk_term_live() == base);
}

static void early_stop (void) {
  static const char *const t[] = { "a(1)", "a(_)", "_", "a(1)", "a(1)" };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(5, t);
  mk_term *q = P("a(1)");
  Coll c = { 0, 2 };
  int i, seen = 0;
  addall(ix, it, 5);
  CHECK(mk_index_match(ix, q, collect, &c) == 2 && c.calls == 2);
  for (i = 0; i < 5; i++) seen += it[i].seen;
  CHECK(seen == 2);
  c.calls = 0; c.stopat = 1;
  CHECK(mk_index_match(ix, q, collect, &c) == 1);
  c.calls = 0; c.stopat = 0;
  CHECK(mk_index_match(ix, q, collect, &c) == 5);
  mk_unref(q);
  mk_index_free(ix);
  freeitems(it, 5);
  CHECK(mk_term_live() == base);
}

/* Node accounting: a topic costs a node where it parts from the others
** (its first token past the prefix it shares; the rest is that leaf's
** tail), shared prefixes are shared, and removal folds a chain left with
** one leaf back into that leaf, and prunes back to the root. */
static void pruning (void) {
  static const char *const t[] = {
    "f(1, [2])",       /* f/2, a leaf: 1 node */
    "f(1, [3])",       /* split: f/2 1 seq/1 then 2 and 3: + 4 */
    "f(_, [3])",       /* + _ */
    "f(1, [2])",       /* same leaf */
    "_",               /* + root's wild */
    "[]",              /* + seq/0 */
  };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(6, t);
  CHECK(mk_index_add(ix, it[0].topic, &it[0].link) == 0);
  CHECK(mk_index_nodes(ix) == 2);
  CHECK(mk_index_add(ix, it[1].topic, &it[1].link) == 0);
  CHECK(mk_index_nodes(ix) == 6);
  CHECK(mk_index_add(ix, it[2].topic, &it[2].link) == 0);
  CHECK(mk_index_nodes(ix) == 7);
  CHECK(mk_index_add(ix, it[3].topic, &it[3].link) == 0);
  CHECK(mk_index_nodes(ix) == 7);
  CHECK(mk_index_add(ix, it[4].topic, &it[4].link) == 0);
  CHECK(mk_index_add(ix, it[5].topic, &it[5].link) == 0);
  CHECK(mk_index_nodes(ix) == 9 && mk_index_count(ix) == 6);
  mk_index_remove(ix, &it[0].link);
  CHECK(mk_index_nodes(ix) == 9);   /* it[3] still there */
  mk_index_remove(ix, &it[3].link);
  CHECK(mk_index_nodes(ix) == 6);   /* 1 seq/1 3 folded into 1 */
  CHECK(matches(ix, it, 6, "f(1, [3])", "1 2 4"));
  CHECK(matches(ix, it, 6, "f(1, [2])", "4"));
  mk_index_remove(ix, &it[1].link);
  CHECK(mk_index_nodes(ix) == 4);   /* f/2 _ folded into f/2 */
  CHECK(matches(ix, it, 6, "f(1, [3])", "2 4"));
  mk_index_remove(ix, &it[4].link);
  mk_index_remove(ix, &it[2].link);
  CHECK(mk_index_nodes(ix) == 2);
  mk_index_remove(ix, &it[5].link);
  CHECK(mk_index_nodes(ix) == 1 && mk_index_count(ix) == 0);
  CHECK(matches(ix, it, 6, "_", ""));
  /* all the index's references to atoms are gone with the nodes */
  freeitems(it, 6);
  CHECK(mk_term_live() == base);
  mk_index_free(ix);
}

/*
** A leaf borrows its atom key from its topic (route.c, lend).  Here the
** node of the token 1 is made from the second topic's token (the split),
** and the first topic's leaf is what it folds into when the second goes:
** its key must then be the first topic's own 1, the second's let go, so
** that dropping the second topic at once leaves no node reading it (an
** ASan build sees that), and nothing of either is left when all go.
*/
static void borrowed_keys (void) {
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(3, NULL);
  it[0].topic = P("f(1, \"x\")");
  it[1].topic = P("f(1, \"y\")");
  it[2].topic = P("f(2, \"z\")");
  addall(ix, it, 3);
  CHECK(mk_index_nodes(ix) == 6);   /* root, f/2, 1 (the second's), x, y, 2 */
  mk_index_remove(ix, &it[1].link);
  mk_unref(it[1].topic);            /* its 1 goes with it */
  it[1].topic = NULL;
  CHECK(mk_index_nodes(ix) == 4);   /* root, f/2, 2, and x folded into 1 */
  CHECK(matches(ix, it, 3, "f(1, _)", "0"));
  CHECK(matches(ix, it, 3, "f(_, \"x\")", "0"));
  mk_index_remove(ix, &it[2].link);
  CHECK(matches(ix, it, 3, "f(1, \"x\")", "0"));
  mk_index_remove(ix, &it[0].link);
  CHECK(mk_index_nodes(ix) == 1);
  freeitems(it, 3);
  CHECK(mk_term_live() == base);
  mk_index_free(ix);
}

/* Wide nodes: the child map grows into a hash table and shrinks back. */
static void wide (void) {
  enum { N = 3000 };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(N, NULL);
  mk_rtype *w = mk_rtype_get("w", 1, 1, NULL);
  int i, ok = 1;
  char buf[32];
  for (i = 0; i < N; i++) {
    /* ints, strings and floats all hang off the same node */
    mk_term *atom = i % 3 == 0 ? mk_int(i) : i % 3 == 1 ? mk_float(i + 0.5)
                  : mk_str(buf, (size_t)snprintf(buf, sizeof buf, "s%d", i));
    it[i].topic = mk_rec(w, atom);
  }
  addall(ix, it, N);
  CHECK(mk_index_nodes(ix) == 2 + N);
  for (i = 0; i < N; i++) {
    Coll c = { 0, 0 };
    it[i].seen = 0;
    ok &= mk_index_match(ix, it[i].topic, collect, &c) == 1 && it[i].seen == 1;
  }
  CHECK(ok);
  /* remove in a scrambled order, checking the survivors as we go */
  for (i = 0; i < N; i++) {
    int k = (int)(((unsigned)i * 7919u) % N);
    Coll c = { 0, 0 };
    mk_index_remove(ix, &it[k].link);
    ok &= mk_index_match(ix, it[k].topic, collect, &c) == 0;
    if (i % 97 == 0) {
      int j;
      for (j = 0; j < N; j++) {
        c.calls = 0;
        ok &= mk_index_match(ix, it[j].topic, collect, &c) == (it[j].link.leaf != NULL);
      }
      ok &= mk_index_nodes(ix) == 2 + mk_index_count(ix) || mk_index_count(ix) == 0;
    }
  }
  CHECK(ok);
  CHECK(mk_index_nodes(ix) == 1);
  mk_rtype_unref(w);
  mk_index_free(ix);
  freeitems(it, N);
  CHECK(mk_term_live() == base);
}

/*
** Waves: N topics under one node come and go, again and again (processes
** spawned with other(pid, _, _) and killed).  The node's table grows to
** its peak and back each time; the tables it gives up are kept for the
** next wave (route.c, spare), which must find them cleared: every wave
** matches exactly its own items, including one that goes to another
** node (a different record type) and takes the spares from there.
*/
static void waves (void) {
  enum { N = 3000, WAVES = 4 };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(N, NULL);
  mk_rtype *rt[2];
  int w, i, ok = 1;
  rt[0] = mk_rtype_get("w", 1, 3, NULL);
  rt[1] = mk_rtype_get("v", 1, 3, NULL);
  for (w = 0; w < WAVES; w++) {
    mk_rtype *r = rt[w % 2 == 1];
    for (i = 0; i < N; i++)   /* a new pid each wave, as spawns get */
      it[i].topic = mk_rec(r, mk_int((int64_t)w * N + i), mk_wild(), mk_wild());
    addall(ix, it, N);
    CHECK(mk_index_nodes(ix) == 2 + (size_t)N);   /* each pid a leaf, _ _ its tail */
    for (i = 0; i < N; i++) {
      Coll c = { 0, 0 };
      mk_term *old = mk_rec(rt[w % 2 == 0], mk_int((int64_t)(w - 1) * N + i), mk_wild(), mk_wild());
      mk_term *gone = mk_rec(r, mk_int((int64_t)(w + 1) * N + i), mk_wild(), mk_wild());
      it[i].seen = 0;
      ok &= mk_index_match(ix, it[i].topic, collect, &c) == 1 && it[i].seen == 1;
      /* last wave's topic and a later one's are not there */
      ok &= mk_index_match(ix, old, collect, &c) == 0 && mk_index_match(ix, gone, collect, &c) == 0;
      mk_unref(old);
      mk_unref(gone);
    }
    CHECK(ok);
    {
      Coll c = { 0, 0 };
      mk_term *any = mk_rec(r, mk_wild(), mk_int(1), mk_int(2));
      CHECK(mk_index_match(ix, any, collect, &c) == N);
      mk_unref(any);
    }
    for (i = 0; i < N; i++) mk_index_remove(ix, &it[(i * 7919) % N].link);
    CHECK(mk_index_nodes(ix) == 1);
    for (i = 0; i < N; i++) {
      mk_unref(it[i].topic);
      it[i].topic = NULL;
    }
  }
  CHECK(mk_term_live() == base);
  mk_rtype_unref(rt[0]);
  mk_rtype_unref(rt[1]);
  mk_index_free(ix);
  freeitems(it, N);
}

/* A callback may match again on the same index (but not add to it). */
typedef struct Nest {
  mk_index *ix;
  mk_term *inner;
  size_t innercount;
  int outer;
  int refused;   /* adds refused during the walk */
} Nest;

static int count_only (mk_ilink *l, void *ctx) {
  (void)l;
  (*(size_t *)ctx)++;
  return 0;
}

static int nested_cb (mk_ilink *l, void *ctx) {
  Nest *n = (Nest *)ctx;
  size_t k = 0;
  (void)l;
  mk_ilink extra = { NULL, NULL, NULL };
  n->outer++;
  n->innercount += mk_index_match(n->ix, n->inner, count_only, &k);
  n->refused += mk_index_add(n->ix, n->inner, &extra) == -1 && extra.leaf == NULL;
  return 0;
}

static void reentrant (void) {
  static const char *const t[] = { "a(1)", "a(2)", "a(_)", "b(_)", "_" };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(5, t);
  mk_term *q = P("a(_)");
  Nest n;
  addall(ix, it, 5);
  n.ix = ix;
  n.inner = P("b(1)");
  n.innercount = 0;
  n.outer = 0;
  n.refused = 0;
  CHECK(mk_index_match(ix, q, nested_cb, &n) == 4);
  CHECK(n.outer == 4 && n.innercount == 4 * 2);
  CHECK(n.refused == 4 && mk_index_count(ix) == 5);
  mk_unref(n.inner);
  mk_unref(q);
  mk_index_free(ix);
  freeitems(it, 5);
  CHECK(mk_term_live() == base);
}

/* A deep topic and query: the walk keeps no recursion. */
static void deep_topic (void) {
  enum { N = MK_TERM_DEPTH_MAX };     /* the deepest topic one may make */
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  mk_rtype *cons = mk_rtype_get("cons", 4, 2, NULL);
  mk_term *a = mk_nil(), *b = mk_wild();
  Item it[2];
  Coll c = { 0, 0 };
  int i;
  memset(it, 0, sizeof it);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_MAX) == 0);
  for (i = 0; i < N; i++) {
    a = mk_rec(cons, mk_int(i % 5), a);
    b = mk_rec(cons, i % 2 ? mk_wild() : mk_int(i % 5), b);
  }
  CHECK(mk_index_add(ix, a, &it[0].link) == 0);
  CHECK(mk_index_nodes(ix) == 2);   /* one leaf, the rest its tail */
  CHECK(mk_index_match(ix, a, collect, &c) == 1);
  CHECK(mk_index_match(ix, b, collect, &c) == 1);
  CHECK(mk_index_add(ix, b, &it[1].link) == 0);
  CHECK(mk_index_nodes(ix) == 4);   /* b parts from a at its second token */
  c.calls = 0;
  CHECK(mk_index_match(ix, a, collect, &c) == 2);
  CHECK(mk_index_match(ix, mk_wild(), collect, &c) == 2);
  mk_unref(a); mk_unref(b);
  mk_index_remove(ix, &it[0].link);
  CHECK(mk_index_nodes(ix) == 2);
  mk_index_free(ix);   /* frees a deep trie with it[1] still in it */
  CHECK(it[1].link.leaf == NULL);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  mk_rtype_unref(cons);
  CHECK(mk_term_live() == base);
}

/*
** The match cache (route.c): a query like one before, equal where the
** walk read it, is answered from the cache while the trie is unchanged.
** Every change in between must show: a topic added or removed, one that
** reads a place the cached walk stepped over, a wildcard one.
*/
static void cache (void) {
  static const char *const t[] = {
    "ch(1, 2, _)", "ch(1, 2, _)", "ch(_, 2, _)", "ch(1, 2, \"y\")", "ch(2, 1, _)",
    "[1, _]", "[_, 2]", "ch(1, 2, _)", "ch(1, 2, _)"
  };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(9, t);
  mk_term *q = P("ch(1, 2, \"x\")");
  Coll c = { 0, 1 };
  CHECK(mk_index_add(ix, it[0].topic, &it[0].link) == 0);
  CHECK(matches(ix, it, 9, "ch(1, 2, \"x\")", "0"));
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "0"));   /* the payload is not read */
  CHECK(matches(ix, it, 9, "ch(1, 3, \"y\")", ""));
  CHECK(mk_index_add(ix, it[1].topic, &it[1].link) == 0);
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "0 1"));
  mk_index_remove(ix, &it[0].link);
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "1"));
  CHECK(mk_index_add(ix, it[2].topic, &it[2].link) == 0);   /* a wildcard first item */
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "1 2"));
  CHECK(matches(ix, it, 9, "ch(7, 2, \"y\")", "2"));
  CHECK(mk_index_add(ix, it[3].topic, &it[3].link) == 0);   /* now the payload is read */
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "1 2 3"));
  CHECK(matches(ix, it, 9, "ch(1, 2, \"x\")", "1 2"));
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "1 2 3"));
  CHECK(matches(ix, it, 9, "ch(1, 2, _)", "1 2 3"));
  mk_index_remove(ix, &it[3].link);
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "1 2"));
  CHECK(mk_index_add(ix, it[4].topic, &it[4].link) == 0);
  CHECK(matches(ix, it, 9, "ch(2, 1, \"y\")", "4"));
  CHECK(matches(ix, it, 9, "ch(2, 2, \"y\")", "2"));
  CHECK(matches(ix, it, 9, "ch(1, 2, \"y\")", "1 2"));
  /* sequences too */
  CHECK(mk_index_add(ix, it[5].topic, &it[5].link) == 0);
  CHECK(matches(ix, it, 9, "[1, 2]", "5"));
  CHECK(matches(ix, it, 9, "[1, 3]", "5"));
  CHECK(mk_index_add(ix, it[6].topic, &it[6].link) == 0);
  CHECK(matches(ix, it, 9, "[1, 2]", "5 6"));
  CHECK(matches(ix, it, 9, "[1, 3]", "5"));
  /* a walk stopped early is not remembered as the whole answer */
  CHECK(mk_index_match(ix, q, collect, &c) == 1);
  CHECK(matches(ix, it, 9, "ch(1, 2, \"x\")", "1 2"));
  c.calls = 0;
  CHECK(mk_index_match(ix, q, collect, &c) == 1);   /* nor stops from the cache */
  /* more matches than an entry holds */
  CHECK(mk_index_add(ix, it[7].topic, &it[7].link) == 0);
  CHECK(mk_index_add(ix, it[8].topic, &it[8].link) == 0);
  CHECK(matches(ix, it, 9, "ch(1, 2, \"x\")", "1 2 7 8"));
  CHECK(matches(ix, it, 9, "ch(1, 2, \"x\")", "1 2 7 8"));
  mk_index_remove(ix, &it[7].link);
  CHECK(matches(ix, it, 9, "ch(1, 2, \"x\")", "1 2 8"));
  mk_unref(q);
  mk_index_free(ix);
  freeitems(it, 9);
  CHECK(mk_term_live() == base);
}

/* A sender's match slot (route.h): answers what the shared table
** would, is voided by every add and remove of a topic of its record type
** (others: cache_buckets), keeps the key it was filled with (a query that
** differs in a place the walk reads is not answered from it), and holds
** references until it is cleared.  mk_match_slot_items gives what it
** holds while that is current, and nothing once it is voided. */
static void slot (void) {
  static const char *const t[] = {
    "ch(1, 2, _)", "ch(_, 2, _)", "ch(1, 2, \"y\")", "ch(2, 1, _)"
  };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(4, t);
  mk_match_slot s, s2;
  mk_ilink *const *res = NULL;
  mk_term *q = P("ch(1, 2, \"w\")"), *big;
  Coll c = { 0, 1 };
  char payload[600];
  memset(&s, 0, sizeof s);
  memset(&s2, 0, sizeof s2);
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"x\")", ""));   /* an empty index */
  CHECK(mk_index_add(ix, it[0].topic, &it[0].link) == 0);
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"x\")", "0"));  /* walked, kept */
  CHECK(s.e.gen != 0 && s.e.nres == 1 && s.e.res[0] == &it[0].link);
  CHECK(mk_match_slot_items(ix, &s, &res) == 1 && res[0] == &it[0].link);
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"y\")", "0"));  /* the payload is not read */
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 3, \"y\")", ""));   /* another key */
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"y\")", "0"));
  CHECK(matches_slot(ix, &s2, it, 4, "ch(1, 2, \"y\")", "0")); /* from the table */
  CHECK(s2.e.gen == s.e.gen && s2.e.res[0] == &it[0].link);
  CHECK(mk_index_add(ix, it[1].topic, &it[1].link) == 0);     /* voids both */
  CHECK(mk_match_slot_items(ix, &s, &res) == 0);
  CHECK(mk_match_slot_items(ix, &s2, &res) == 0);
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"y\")", "0 1"));
  CHECK(mk_match_slot_items(ix, &s, &res) == 2);
  CHECK((res[0] == &it[0].link && res[1] == &it[1].link) ||
        (res[0] == &it[1].link && res[1] == &it[0].link));
  CHECK(matches_slot(ix, &s2, it, 4, "ch(7, 2, \"y\")", "1"));
  CHECK(mk_index_add(ix, it[2].topic, &it[2].link) == 0);     /* now the payload is read */
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"y\")", "0 1 2"));
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"x\")", "0 1"));
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"y\")", "0 1 2"));
  mk_index_remove(ix, &it[1].link);
  CHECK(mk_match_slot_items(ix, &s, &res) == 0);     /* it[1] may be gone */
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"y\")", "0 2"));
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"x\")", "0"));
  /* a heavy key in a place the walk reads is not held */
  mk_match_slot_clear(&s);
  memset(payload, 'x', sizeof payload);
  big = mk_rec(q->v.rt, mk_int(1), mk_int(2), mk_str(payload, sizeof payload));
  c.stopat = 0;
  c.calls = 0;
  CHECK(mk_index_match_slot(ix, &s, big, collect, &c) == 1);
  CHECK(s.e.gen == 0);
  CHECK(mk_match_slot_items(ix, &s, &res) == 0);     /* an empty slot */
  mk_unref(big);
  /* more matches than a slot holds */
  CHECK(mk_index_add(ix, it[1].topic, &it[1].link) == 0);
  CHECK(mk_index_add(ix, it[3].topic, &it[3].link) == 0);
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"y\")", "0 1 2"));
  CHECK(s.e.gen == 0);
  CHECK(matches_slot(ix, &s, it, 4, "ch(2, 1, \"y\")", "3"));
  CHECK(matches_slot(ix, &s, it, 4, "ch(2, 1, \"y\")", "3"));
  /* a walk stopped early is not kept, nor stops a kept answer's calls */
  mk_match_slot_clear(&s);
  c.stopat = 1;
  c.calls = 0;
  CHECK(mk_index_match_slot(ix, &s, q, collect, &c) == 1);
  CHECK(s.e.gen == 0);
  CHECK(matches_slot(ix, &s, it, 4, "ch(1, 2, \"w\")", "0 1"));
  CHECK(s.e.gen != 0);
  c.calls = 0;
  CHECK(mk_index_match_slot(ix, &s, q, collect, &c) == 1);
  /* not a record or a sequence, or too long: no slot */
  CHECK(matches_slot(ix, &s2, it, 4, "\"y\"", ""));
  CHECK(matches_slot(ix, &s2, it, 4, "ch(1, 2, 3, 4, 5)", ""));
  mk_unref(q);
  mk_index_free(ix);
  freeitems(it, 4);
  CHECK(mk_term_live() > base);          /* the slots hold their keys ... */
  mk_match_slot_clear(&s);
  mk_match_slot_clear(&s2);
  CHECK(mk_term_live() == base);         /* ... until cleared */
}

/* A sender taking turns between keys keeps the first in its slot, the
** others answered from the table meanwhile (a refill at each would cost
** a clear and a fill), and one that has moved to another key for
** MK_SLOT_MISSES looks has that one there from then on. */
static void slot_turns (void) {
  static const char *const t[] = { "ch(1, _, _)", "ch(2, _, _)" };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(2, t);
  mk_match_slot s;
  mk_ilink *const *res = NULL;
  int k;
  memset(&s, 0, sizeof s);
  CHECK(mk_index_add(ix, it[0].topic, &it[0].link) == 0);
  CHECK(mk_index_add(ix, it[1].topic, &it[1].link) == 0);
  for (k = 0; k < 3 * MK_SLOT_MISSES; k++) {
    CHECK(matches_slot(ix, &s, it, 2, "ch(1, 0, 0)", "0"));
    CHECK(matches_slot(ix, &s, it, 2, "ch(2, 0, \"x\")", "1"));
    CHECK(mk_match_slot_items(ix, &s, &res) == 1 && res[0] == &it[0].link);
  }
  /* one look that missed so far; the MK_SLOT_MISSES-th refills */
  for (k = 2; k < MK_SLOT_MISSES; k++) {
    CHECK(matches_slot(ix, &s, it, 2, "ch(2, 1, 1)", "1"));
    CHECK(mk_match_slot_items(ix, &s, &res) == 1 && res[0] == &it[0].link);
  }
  CHECK(matches_slot(ix, &s, it, 2, "ch(2, 1, 1)", "1"));
  CHECK(mk_match_slot_items(ix, &s, &res) == 1 && res[0] == &it[1].link);
  CHECK(s.misses == 0);
  /* a voided slot is refilled at once, whatever it missed */
  CHECK(matches_slot(ix, &s, it, 2, "ch(1, 0, 0)", "0"));
  CHECK(s.misses == 1);
  mk_index_remove(ix, &it[1].link);
  CHECK(mk_match_slot_items(ix, &s, &res) == 0);
  CHECK(matches_slot(ix, &s, it, 2, "ch(1, 0, 0)", "0"));
  CHECK(mk_match_slot_items(ix, &s, &res) == 1 && res[0] == &it[0].link);
  CHECK(matches_slot(ix, &s, it, 2, "ch(2, 0, 0)", ""));
  CHECK(mk_match_slot_items(ix, &s, &res) == 1 && res[0] == &it[0].link);
  mk_index_free(ix);
  freeitems(it, 2);
  mk_match_slot_clear(&s);
  CHECK(mk_term_live() == base);
}

/*
** Only what can unify with a query voids its cache entry and its slots:
** a channel's answers stay through adds and removes of topics of other
** record types (a connection's idle alarm, re-armed, issue 10), of
** sequences and of scalars, and go with a topic of its own record type
** or a wildcard one.
*/
static void cache_buckets (void) {
  static const char *const t[] = {
    "ch(\"a\", \"b\", _)", "timer(_, 5)", "[\"a\", _, _]", "\"a\"", "ch(\"a\", _, _)", "_"
  };
  static const char *const q = "ch(\"a\", \"b\", \"x\")";
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(6, t);
  mk_match_slot s;
  int i, hit, hs;
  memset(&s, 0, sizeof s);
  CHECK(mk_index_add(ix, it[0].topic, &it[0].link) == 0);
  CHECK(matches_hit(ix, NULL, it, 6, q, "0", &hit) && !hit);     /* walked */
  CHECK(matches_hit(ix, NULL, it, 6, q, "0", &hit) && hit);      /* the table's */
  CHECK(matches_hit(ix, &s, it, 6, q, "0", &hs) && !hs);        /* the slot filled */
  CHECK(matches_hit(ix, &s, it, 6, q, "0", &hs) && hs);         /* the slot's */
  for (i = 1; i <= 3; i++) {   /* other record types, sequences, scalars */
    CHECK(mk_index_add(ix, it[i].topic, &it[i].link) == 0);
    CHECK(matches_hit(ix, NULL, it, 6, q, "0", &hit) && hit);
    CHECK(matches_hit(ix, &s, it, 6, q, "0", &hs) && hs);
    mk_index_remove(ix, &it[i].link);
    CHECK(matches_hit(ix, NULL, it, 6, q, "0", &hit) && hit);
    CHECK(matches_hit(ix, &s, it, 6, q, "0", &hs) && hs);
  }
  CHECK(matches(ix, it, 6, "timer(1, 5)", ""));
  CHECK(mk_index_add(ix, it[1].topic, &it[1].link) == 0);
  CHECK(matches(ix, it, 6, "timer(1, 5)", "1"));               /* its own is voided */
  for (i = 4; i <= 5; i++) {   /* the same record type, a wildcard */
    const char *want = i == 4 ? "0 4" : "0 5";
    CHECK(mk_index_add(ix, it[i].topic, &it[i].link) == 0);
    CHECK(matches_hit(ix, &s, it, 6, q, want, &hs) && !hs);
    CHECK(matches_hit(ix, NULL, it, 6, q, want, &hit) && hit);
    CHECK(matches_hit(ix, &s, it, 6, q, want, &hs) && hs);
    mk_index_remove(ix, &it[i].link);
    CHECK(matches_hit(ix, NULL, it, 6, q, "0", &hit) && !hit);
    CHECK(matches_hit(ix, &s, it, 6, q, "0", &hs) && !hs);
  }
  CHECK(matches(ix, it, 6, "timer(1, 5)", "1"));
  CHECK(matches(ix, it, 6, "[\"a\", 1, 2]", ""));
  mk_index_free(ix);
  freeitems(it, 6);
  mk_match_slot_clear(&s);
  CHECK(mk_term_live() == base);
}

/* The cache keeps its keys alive, so it takes light ones only: a large
** payload in a place the walk reads is not held after the match. */
static void cache_light (void) {
  mk_index *ix = mk_index_new();
  Item it[1];
  char big[1000];
  mk_term *t = P("[\"ping\", _]"), *q;
  Coll c = { 0, 0 };
  size_t base;
  memset(it, 0, sizeof it);
  memset(big, 'x', sizeof big);
  CHECK(mk_index_add(ix, t, &it[0].link) == 0);
  base = mk_term_live();
  q = mk_seq_new(2);
  mk_set(q, 0, mk_str(big, sizeof big));
  mk_set(q, 1, mk_int(1));
  q = mk_seal(q);
  CHECK(mk_index_match(ix, q, collect, &c) == 0);
  mk_unref(q);
  CHECK(mk_term_live() == base);
  q = P("[\"pong\", 1]");            /* a light one is kept */
  CHECK(mk_index_match(ix, q, collect, &c) == 0);
  mk_unref(q);
  CHECK(mk_term_live() > base);
  mk_index_free(ix);
  mk_unref(t);
}

/* }====================================================== */

/*
** {======================================================
** Randomised cross-check
** =======================================================
*/

static uint64_t rng;

static uint32_t rnd (uint32_t n) {
  rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
  return (uint32_t)((rng * 0x2545F4914F6CDD1Dull) >> 33) % n;
}

static mk_rtype *rts[5];   /* the record types gen() draws from */

static void getrts (void) {
  rts[0] = mk_rtype_get("p", 1, 0, NULL);
  rts[1] = mk_rtype_get("p", 1, 2, NULL);
  rts[2] = mk_rtype_get("q", 1, 1, NULL);
  rts[3] = mk_rtype_get("q", 1, 3, NULL);
  rts[4] = mk_rtype_get("r", 1, 2, NULL);
}

static void droprts (void) {
  int i;
  for (i = 0; i < 5; i++) mk_rtype_unref(rts[i]);
}

static mk_term *gen (int depth, uint32_t wildpct) {
  uint32_t r = rnd(100);
  if (r < wildpct) return mk_wild();
  if (depth == 0 || rnd(100) < 45) {
    switch (rnd(8)) {
      case 0: return mk_nil();
      case 1: return mk_bool((int)rnd(2));
      case 2: case 3: return mk_int((int64_t)rnd(3) - 1);
      case 4: return mk_float(rnd(2) ? 0.5 : -1.5);
      case 5: case 6: return mk_str("ba\0", rnd(4));
      default: return rnd(4) ? mk_cstr("b") : mk_eof();
    }
  }
  else {
    mk_term *t;
    uint32_t i;
    if (rnd(2)) t = mk_rec_new(rts[rnd(5)]);
    else t = mk_seq_new(rnd(4));
    for (i = 0; i < t->n; i++) mk_set(t, i, gen(depth - 1, wildpct));
    return mk_seal(t);
  }
}

/* A cross-check of n items, their topics still to make. */
static void cross_begin (Cross *x, int n) {
  x->ix = mk_index_new();
  x->items = mkitems(n, NULL);
  x->n = n;
  x->ok = 1;
  x->reported = x->checked = 0;
  x->slot = NULL;
}

/* Remove every item (the trie must be back to its root), free it all and
** add up the results. */
static void cross_end (Cross *x, int *ok, long *reported, long *checked) {
  int i;
  for (i = 0; i < x->n; i++) mk_index_remove(x->ix, &x->items[i].link);
  if (mk_index_nodes(x->ix) != 1 || mk_index_count(x->ix) != 0) x->ok = 0;
  mk_index_free(x->ix);
  freeitems(x->items, x->n);
  *ok &= x->ok;
  *reported += x->reported;
  *checked += x->checked;
}

static void randomized (void) {
  static const uint64_t seeds[] = { 1, 42, 0xdeadbeefull, 0x9e3779b97f4a7c15ull, 777 };
  enum { NTOPICS = 2000, NQUERIES = 2000 };
  size_t base = mk_term_live(), s;
  long reported = 0, checked = 0;
  int ok = 1;
  getrts();
  for (s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
    Cross x;
    int i, k, round;
    rng = seeds[s];
    cross_begin(&x, NTOPICS);
    for (i = 0; i < NTOPICS; i++) {
      uint32_t r = rnd(100);
      if (i > 0 && r < 5)        /* the same term again */
        x.items[i].topic = mk_ref(x.items[rnd((uint32_t)i)].topic);
      else if (i > 0 && r < 10)  /* an equal copy, via repr round trip */
        x.items[i].topic = P_copy(x.items[rnd((uint32_t)i)].topic);
      else
        x.items[i].topic = gen(1 + (int)rnd(4), 3 + rnd(12));
      if (mk_index_add(x.ix, x.items[i].topic, &x.items[i].link) != 0) x.ok = 0;
    }
    for (round = 0; round < 3; round++) {
      for (k = 0; k < NQUERIES; k++) {
        mk_term *q;
        uint32_t r = rnd(100);
        if (r < 30)   /* a topic itself, or one with more wildcards */
          q = mk_ref(x.items[rnd(NTOPICS)].topic);
        else
          q = gen((int)rnd(5), rnd(3) ? rnd(20) : 0);
        crosscheck(&x, q);
        mk_unref(q);
      }
      if (round == 0) {        /* remove half at random */
        for (i = 0; i < NTOPICS; i++)
          if (rnd(2)) mk_index_remove(x.ix, &x.items[i].link);
      }
      else if (round == 1) {   /* re-add some, remove others */
        for (i = 0; i < NTOPICS; i++) {
          Item *it = &x.items[i];
          if (it->link.leaf == NULL) {
            if (rnd(3) == 0 && mk_index_add(x.ix, it->topic, &it->link) != 0) x.ok = 0;
          }
          else if (rnd(4) == 0) mk_index_remove(x.ix, &it->link);
        }
      }
      {
        size_t live = 0;
        for (i = 0; i < NTOPICS; i++) live += x.items[i].link.leaf != NULL;
        if (mk_index_count(x.ix) != live) x.ok = 0;
      }
    }
    cross_end(&x, &ok, &reported, &checked);
  }
  droprts();
  CHECK(ok);
  CHECK(checked == 5L * 3 * NQUERIES);
  CHECK(reported > 50000);   /* matches are plentiful, not a vacuous pass */
  printf("# %ld queries, %ld matches cross-checked\n", checked, reported);
  CHECK(mk_term_live() == base);
}

/* Many senders' shapes at once: the cache grows to hold them, and what
** it answers stays right through the growth and after a change. */
static void cache_many (void) {
  enum { N = 3000 };
  size_t base = mk_term_live();
  long reported = 0, checked = 0;
  int ok = 1, i, pass;
  mk_rtype *ch = mk_rtype_get("ch", 2, 2, NULL);
  mk_term **qs = calloc(N, sizeof *qs);
  Cross x;
  cross_begin(&x, N);
  for (i = 0; i < N; i++) {
    x.items[i].topic = mk_rec(ch, mk_int(i), mk_wild());
    qs[i] = mk_rec(ch, mk_int(i), mk_cstr("data"));
    CHECK(mk_index_add(x.ix, x.items[i].topic, &x.items[i].link) == 0);
  }
  for (pass = 0; pass < 4; pass++) {
    for (i = 0; i < N; i++) crosscheck(&x, qs[i]);
    if (pass == 1) mk_index_remove(x.ix, &x.items[N / 2].link);
  }
  for (i = 0; i < N; i++) mk_unref(qs[i]);
  free(qs);
  mk_rtype_unref(ch);
  cross_end(&x, &ok, &reported, &checked);
  CHECK(ok);
  CHECK(checked == 4L * N && reported == 4L * N - 2);
  CHECK(mk_term_live() == base);
}

/* A topic of a record type no query has (an alarm's, beside channels),
** a wildcard, a sequence or a scalar: the changes the cache's buckets
** must tell apart (route.c, changed). */
static mk_term *gen_other (mk_rtype *other) {
  mk_term *t;
  uint32_t i;
  switch (rnd(4)) {
    case 0: t = mk_rec_new(other); break;
    case 1: return mk_wild();
    case 2: t = mk_seq_new(rnd(4)); break;
    default: return gen(0, 0);
  }
  for (i = 0; i < t->n; i++) mk_set(t, i, gen((int)rnd(2), 20));
  return mk_seal(t);
}

/*
** The match cache against the scan: a few queries asked again and again
** (the same terms, as a channel's sender does, and equal copies), with a
** topic added or removed between most of them, some of them topics no
** query's header has (gen_other).  With `slots`, through senders' slots
** (route.h): each query term has its own, and its equal copies use it
** too, as a connection's chunks do.
*/
static void cache_rounds (const uint64_t *seeds, size_t nseeds, int slots) {
  enum { NTOPICS = 300, NOTHER = 60, NQ = 12, STEPS = 40000 };
  size_t base = mk_term_live(), s;
  long reported = 0, checked = 0;
  int ok = 1;
  mk_rtype *other = mk_rtype_get("alarm", 5, 2, NULL);
  getrts();
  for (s = 0; s < nseeds; s++) {
    Cross x;
    mk_term *qs[NQ];
    mk_match_slot slot[NQ];
    int i, step;
    rng = seeds[s];
    memset(slot, 0, sizeof slot);
    cross_begin(&x, NTOPICS + NOTHER);
    for (i = 0; i < NTOPICS; i++) x.items[i].topic = gen(1 + (int)rnd(3), 3 + rnd(25));
    for (; i < NTOPICS + NOTHER; i++) x.items[i].topic = gen_other(other);
    for (i = 0; i < NQ; i++) qs[i] = gen(1 + (int)rnd(3), rnd(3) ? rnd(15) : 0);
    for (step = 0; step < STEPS; step++) {
      uint32_t r = rnd(100), k = rnd(NQ);
      Item *it = &x.items[r < 90 ? rnd(NTOPICS) : NTOPICS + rnd(NOTHER)];
      x.slot = slots ? &slot[k] : NULL;
      if (r < 75) crosscheck(&x, qs[k]);
      else if (r < 85) {
        mk_term *q = P_copy(qs[k]);
        crosscheck(&x, q);
        mk_unref(q);
      }
      else if (it->link.leaf == NULL) {
        if (mk_index_add(x.ix, it->topic, &it->link) != 0) x.ok = 0;
      }
      else mk_index_remove(x.ix, &it->link);
    }
    for (i = 0; i < NQ; i++) { mk_unref(qs[i]); mk_match_slot_clear(&slot[i]); }
    cross_end(&x, &ok, &reported, &checked);
  }
  droprts();
  mk_rtype_unref(other);
  CHECK(ok);
  CHECK(reported > 20000);
  printf("# %ld repeated queries%s, %ld matches cross-checked\n", checked,
         slots ? " through slots" : "", reported);
  CHECK(mk_term_live() == base);
}

static void randomized_cache (void) {
  static const uint64_t seeds[] = { 3, 99, 0x5eedull };
  cache_rounds(seeds, sizeof seeds / sizeof seeds[0], 0);
}

static void randomized_slots (void) {
  static const uint64_t seeds[] = { 5, 77, 0x510full };
  cache_rounds(seeds, sizeof seeds / sizeof seeds[0], 1);
}

/*
** A copy of t with the subterm at preorder position *pos replaced by
** `by` (stolen); *pos counts down as the copy goes.  Recursion as deep as
** t, which is shallow here.
*/
static mk_term *replace_at (const mk_term *t, size_t *pos, mk_term *by) {
  mk_term *c;
  uint32_t i;
  if ((*pos)-- == 0) return by;
  if (t->kind != MK_REC && t->kind != MK_SEQ) return mk_ref((mk_term *)t);
  c = t->kind == MK_REC ? mk_rec_new(t->v.rt) : mk_seq_new(t->n);
  for (i = 0; i < t->n; i++) mk_set(c, i, replace_at(mk_items(t)[i], pos, by));
  return mk_seal(c);
}

/* t with the subterm at a random preorder position replaced by `by`
** (stolen). */
static mk_term *mutate (const mk_term *t, mk_term *by) {
  size_t pos = rnd((uint32_t)mk_term_size(t));
  return replace_at(t, &pos, by);
}

/* A long topic: a sequence of up to 60 small terms, or a right-nested
** chain of records of different arities over the same labels. */
static mk_term *gen_long (void) {
  uint32_t i, n = 20 + rnd(41);
  if (rnd(2)) {
    mk_term *t = mk_seq_new(n);
    for (i = 0; i < n; i++) mk_set(t, i, gen((int)rnd(2), 2));
    return mk_seal(t);
  }
  else {
    mk_term *t = gen(0, 0);
    for (i = 0; i < n; i++) {
      mk_rtype *rt = rts[1 + rnd(4)];   /* arity 1 to 3 */
      mk_term *r = mk_rec_new(rt);
      uint32_t k;
      for (k = 0; k + 1 < rt->arity; k++) mk_set(r, k, gen(0, 2));
      mk_set(r, rt->arity - 1, t);
      t = mk_seal(r);
    }
    return t;
  }
}

/*
** Leaves and their tails (route.c): topics that share long runs and part
** anywhere inside them, so that adding splits a tail at every depth and
** removing folds chains back.  Checked against the scan with queries
** that are the topics themselves, the topics with a wildcard put at a
** random place (inside a run), the topics changed at a random place, and
** random terms; and the node count against a fresh index of the same
** topics after every change of the set, which only holds when removal
** folds back all that adding split.
*/
static void randomized_tails (void) {
  static const uint64_t seeds[] = { 5, 0xfeedull, 31337 };
  enum { NBASE = 12, NTOPICS = 600, STEPS = 6000 };
  size_t base = mk_term_live(), s;
  long reported = 0, checked = 0;
  int ok = 1, shapes = 1;
  getrts();
  for (s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
    Cross x;
    mk_term *bases[NBASE];
    int i, step;
    rng = seeds[s];
    for (i = 0; i < NBASE; i++) bases[i] = gen_long();
    cross_begin(&x, NTOPICS);
    for (i = 0; i < NTOPICS; i++) {   /* a base changed at 0 to 3 places */
      mk_term *t = mk_ref(bases[rnd(NBASE)]);
      uint32_t k, m = rnd(4);
      for (k = 0; k < m; k++) {
        mk_term *u = mutate(t, gen((int)rnd(3), 10));
        mk_unref(t);
        t = u;
      }
      x.items[i].topic = t;
    }
    for (step = 0; step < STEPS; step++) {
      uint32_t r = rnd(100);
      Item *it = &x.items[rnd(NTOPICS)];
      if (r < 40) {
        if (it->link.leaf == NULL) {
          if (mk_index_add(x.ix, it->topic, &it->link) != 0) x.ok = 0;
        }
        else mk_index_remove(x.ix, &it->link);
        if (step % 8 == 0 && mk_index_nodes(x.ix) != fresh_nodes(&x)) shapes = 0;
      }
      else {
        mk_term *q;
        if (r < 55) q = mk_ref(it->topic);
        else if (r < 75) q = mutate(it->topic, mk_wild());
        else if (r < 90) q = mutate(it->topic, gen((int)rnd(2), 20));
        else q = gen((int)rnd(4), rnd(20));
        crosscheck(&x, q);
        mk_unref(q);
      }
    }
    for (i = 0; i < NBASE; i++) mk_unref(bases[i]);
    cross_end(&x, &ok, &reported, &checked);
  }
  droprts();
  CHECK(ok);
  CHECK(shapes);
  CHECK(reported > 20000);
  printf("# %ld queries on long topics, %ld matches cross-checked\n", checked, reported);
  CHECK(mk_term_live() == base);
}

/* }====================================================== */

/*
** A topic's run past the prefix it shares with the others is one leaf
** (issue 10): topics that share a prefix and then each run on alone, as
** connections' topics do after the port, cost one node each.  Measured
** with glibc's counters; under AddressSanitizer, whose allocator keeps
** other books, only the matching is checked.
*/
static void tails_cost_one_node (void) {
  enum { NT = 1000 };
  static char buf[NT][64];
  static const char *topics[NT];
  Item *items;
  mk_index *ix = mk_index_new();
  int i;
  size_t before, after;
  for (i = 0; i < NT; i++) {
    snprintf(buf[i], sizeof buf[i], "chan(addr(\"h\", %d), lis(5999), _)", i);
    topics[i] = buf[i];
  }
  items = mkitems(NT, topics);
  CHECK(mk_index_add(ix, items[0].topic, &items[0].link) == 0);   /* scratch, shared prefix */
  before = heap_in_use();
  addall(ix, items + 1, NT - 1);
  after = heap_in_use();
  /* Each topic adds its port, with lis(5999) and _ as its tail: one node
  ** of 56 bytes, a 64-byte chunk, and little else (the parent of the
  ** ports holds them in a table: 16 bytes per child).  A node per token
  ** was four nodes a topic; with an array per chain node and 72-byte
  ** nodes it was 443 bytes a topic. */
  if (HEAP_COUNTED)
    CHECK((after - before) / (NT - 1) <= MALLOC_CHUNK(56) + 48);
  CHECK(matches(ix, items, NT, "chan(addr(\"h\", 7), _, \"x\")", "7"));
  CHECK(matches(ix, items, NT, "chan(addr(\"h\", 7), lis(5999), \"x\")", "7"));
  CHECK(matches(ix, items, NT, "chan(addr(\"h\", 7), lis(5998), \"x\")", ""));
  CHECK(matches(ix, items, NT, "chan(addr(_, 7), lis(_), 1)", "7"));
  mk_index_free(ix);
  freeitems(items, NT);
}

/*
** Churn under one node with a hash table of children: most of them
** removed in a scrambled order (each leaves a tomb in the table, or frees
** its slot and the tombs before it; past 65,535 tombs, later children are
** shifted back into the hole instead), then re-added (an insertion takes
** a tomb, or the table is rebuilt without them), then removed and added
** at random.  Every child stays found, every removed one gone, and the
** trie ends as its root.
*/
static void tombs (void) {
  enum { N = 196000, GONE = 160000, CHURN = 40000 };
  size_t base = mk_term_live();
  mk_index *ix = mk_index_new();
  Item *it = mkitems(N, NULL);
  mk_rtype *w = mk_rtype_get("w", 1, 1, NULL);
  int i, ok = 1;
  size_t live = N;
  for (i = 0; i < N; i++) it[i].topic = mk_rec(w, mk_int(i));
  addall(ix, it, N);
  for (i = 0; i < GONE; i++) {
    int k = (int)(((unsigned)i * 7919u) % N);
    Coll c = { 0, 0 };
    mk_index_remove(ix, &it[k].link);
    ok &= mk_index_match(ix, it[k].topic, collect, &c) == 0;
  }
  CHECK(ok);
  for (i = 0; i < N; i++) {   /* the survivors, each found once */
    Coll c = { 0, 0 };
    it[i].seen = 0;
    ok &= mk_index_match(ix, it[i].topic, collect, &c) == (it[i].link.leaf != NULL);
  }
  CHECK(ok);
  CHECK(mk_index_count(ix) == N - GONE && mk_index_nodes(ix) == 2 + N - GONE);
  for (i = GONE - 1; i >= 0; i--) {
    int k = (int)(((unsigned)i * 7919u) % N);
    CHECK(mk_index_add(ix, it[k].topic, &it[k].link) == 0);
  }
  rng = 99;
  for (i = 0; i < CHURN; i++) {
    Item *x = &it[rnd(N)];
    if (x->link.leaf != NULL) { mk_index_remove(ix, &x->link); live--; }
    else { ok &= mk_index_add(ix, x->topic, &x->link) == 0; live++; }
  }
  CHECK(ok);
  CHECK(mk_index_count(ix) == live && mk_index_nodes(ix) == 2 + live);
  for (i = 0; i < N; i++) {
    Coll c = { 0, 0 };
    it[i].seen = 0;
    ok &= mk_index_match(ix, it[i].topic, collect, &c) == (it[i].link.leaf != NULL) &&
          it[i].seen == (it[i].link.leaf != NULL);
  }
  CHECK(ok);
  {
    Coll c = { 0, 0 };
    mk_term *any = mk_rec(w, mk_wild());
    CHECK(mk_index_match(ix, any, collect, &c) == live);
    mk_unref(any);
  }
  for (i = 0; i < N; i++) mk_index_remove(ix, &it[i].link);
  CHECK(mk_index_nodes(ix) == 1);
  mk_rtype_unref(w);
  mk_index_free(ix);
  freeitems(it, N);
  CHECK(mk_term_live() == base);
}

int main (void) {
  RUN(basic);
  RUN(borrowed_topics);
  RUN(topic_wild);
  RUN(query_wild);
  RUN(both_wild);
  RUN(leaf_order);
  RUN(early_stop);
  RUN(pruning);
  RUN(borrowed_keys);
  RUN(wide);
  RUN(waves);
  RUN(reentrant);
  RUN(deep_topic);
  RUN(cache);
  RUN(cache_light);
  RUN(slot);
  RUN(slot_turns);
  RUN(cache_buckets);
  RUN(randomized);
  RUN(randomized_cache);
  RUN(randomized_slots);
  RUN(cache_many);
  RUN(randomized_tails);
  RUN(tails_cost_one_node);
  RUN(tombs);
  return CHECK_DONE();
}

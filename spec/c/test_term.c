/*
** test_term.c: terms, record types, equality, hashing, unification, repr.
*/

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "stackuse.h"
#include "term.h"

#include "termlit.h"

/* repr(t) equals `want`; releases t. */
static int repr_is (mk_term *t, const char *want) {
  size_t len;
  char *s = mk_repr(t, &len);
  int ok = s != NULL && len == strlen(want) && strcmp(s, want) == 0;
  if (!ok) fprintf(stderr, "  repr: got <%s> want <%s>\n", s ? s : "(null)", want);
  free(s);
  mk_unref(t);
  return ok;
}

/* The literal reads back as itself. */
static int roundtrip (const char *s) {
  return repr_is(P(s), s);
}

static int unifies_s (const char *a, const char *b) {
  mk_term *x = P(a), *y = P(b);
  int u = mk_unifies(x, y), v = mk_unifies(y, x);
  if (u != v) fprintf(stderr, "  asymmetric: %s ~ %s\n", a, b);
  mk_unref(x);
  mk_unref(y);
  return u == v ? u : -1;
}

/* mk_unify(a, b) and mk_unify(b, a) both equal `want` (NULL: no unifier). */
static int mgu_is (const char *a, const char *b, const char *want) {
  mk_term *x = P(a), *y = P(b), *w = want ? P(want) : NULL;
  mk_term *m1 = mk_unify(x, y), *m2 = mk_unify(y, x);
  int ok;
  if (w == NULL) ok = m1 == NULL && m2 == NULL;
  else ok = m1 && m2 && mk_equal(m1, w) && mk_equal(m2, w) &&
            mk_hash(m1) == mk_hash(w) && m1->ground == w->ground;
  if (!ok) {
    char *s = m1 ? mk_repr(m1, NULL) : NULL;
    fprintf(stderr, "  mgu(%s, %s): got %s want %s\n", a, b, s ? s : "NULL",
            want ? want : "NULL");
    free(s);
  }
  mk_unref(x); mk_unref(y); mk_unref(w); mk_unref(m1); mk_unref(m2);
  return ok;
}

/*
** {======================================================
** Tests
** =======================================================
*/

static void singletons (void) {
  size_t base = mk_term_live();
  mk_term *all[5];
  int i, j;
  all[0] = mk_nil(); all[1] = mk_bool(0); all[2] = mk_bool(1);
  all[3] = mk_wild(); all[4] = mk_eof();
  CHECK(mk_kindof(all[0]) == MK_NIL);
  CHECK(mk_kindof(all[1]) == MK_FALSE);
  CHECK(mk_kindof(all[2]) == MK_TRUE);
  CHECK(mk_kindof(all[3]) == MK_WILD);
  CHECK(mk_kindof(all[4]) == MK_EOF);
  CHECK(mk_bool(42) == all[2]);
  CHECK(mk_nil() == all[0] && mk_wild() == all[3] && mk_eof() == all[4]);
  for (i = 0; i < 5; i++) {
    CHECK(all[i]->refs == MK_IMMORTAL);
    CHECK(mk_ref(all[i]) == all[i]);
    mk_unref(all[i]);
    mk_unref(all[i]);
    CHECK(all[i]->refs == MK_IMMORTAL);
    CHECK(all[i]->ground == (i != 3));
    for (j = 0; j < 5; j++) CHECK(mk_equal(all[i], all[j]) == (i == j));
  }
  CHECK(mk_ref(NULL) == NULL);
  mk_unref(NULL);
  CHECK(mk_term_live() == base);
}

static void integers (void) {
  size_t base = mk_term_live();
  mk_term *a = mk_int(7), *b = mk_int(7), *c = mk_int(-7);
  mk_term *mn = mk_int(INT64_MIN), *mx = mk_int(INT64_MAX);
  CHECK(mk_term_live() == base + 5);
  CHECK(mk_kindof(a) == MK_INT && a->v.i == 7 && a->refs == 1 && a->ground);
  CHECK(a != b && mk_equal(a, b) && mk_hash(a) == mk_hash(b));
  CHECK(!mk_equal(a, c));
  CHECK(mk_hash(a) != mk_hash(c));
  CHECK(mn->v.i == INT64_MIN && mx->v.i == INT64_MAX && !mk_equal(mn, mx));
  CHECK(!mk_equal(a, mk_nil()) && !mk_equal(mk_bool(0), mk_nil()));
  mk_unref(a); mk_unref(b); mk_unref(c); mk_unref(mn); mk_unref(mx);
  CHECK(mk_term_live() == base);
}

static void floats (void) {
  size_t base = mk_term_live();
  mk_term *t, *u;
  t = mk_float(3.0);
  u = mk_int(3);
  CHECK(mk_kindof(t) == MK_INT && t->v.i == 3);
  CHECK(mk_equal(t, u) && mk_hash(t) == mk_hash(u));
  mk_unref(t); mk_unref(u);
  t = mk_float(-0.0);
  CHECK(mk_kindof(t) == MK_INT && t->v.i == 0);
  mk_unref(t);
  t = mk_float(-9223372036854775808.0);  /* -2^63 fits */
  CHECK(mk_kindof(t) == MK_INT && t->v.i == INT64_MIN);
  mk_unref(t);
  t = mk_float(9223372036854775808.0);   /* 2^63 does not */
  CHECK(mk_kindof(t) == MK_FLOAT && t->v.f == 9223372036854775808.0);
  mk_unref(t);
  t = mk_float(0.5);
  u = mk_float(0.5);
  CHECK(mk_kindof(t) == MK_FLOAT && t->v.f == 0.5);
  CHECK(mk_equal(t, u) && mk_hash(t) == mk_hash(u));
  mk_unref(u);
  u = mk_float(0.25);
  CHECK(!mk_equal(t, u));
  mk_unref(u);
  u = mk_float(1.5);
  CHECK(!mk_equal(t, u));
  mk_unref(t); mk_unref(u);
  t = mk_float(INFINITY);
  u = mk_float(-INFINITY);
  CHECK(mk_kindof(t) == MK_FLOAT && isinf(t->v.f) && !mk_equal(t, u));
  mk_unref(t); mk_unref(u);
  /* NaN: structurally equal to itself, whatever its sign or payload */
  t = mk_float(NAN);
  u = mk_float(-NAN);
  CHECK(mk_kindof(t) == MK_FLOAT && isnan(t->v.f));
  CHECK(mk_equal(t, t) && mk_equal(t, u) && mk_hash(t) == mk_hash(u));
  CHECK(mk_unifies(t, u));
  mk_unref(t); mk_unref(u);
  CHECK(mk_term_live() == base);
}

static void strings (void) {
  size_t base = mk_term_live();
  mk_term *a = mk_str("ab\0c", 4), *b = mk_str("ab\0c", 4), *c = mk_str("ab\0d", 4);
  mk_term *d = mk_cstr("ab"), *e = mk_str(NULL, 0), *f = mk_cstr("");
  CHECK(mk_kindof(a) == MK_STR && a->n == 4 && a->ground);
  CHECK(memcmp(mk_strdata(a), "ab\0c", 5) == 0);  /* NUL terminated too */
  CHECK(mk_equal(a, b) && mk_hash(a) == mk_hash(b));
  CHECK(!mk_equal(a, c) && !mk_equal(a, d));
  CHECK(d->n == 2 && mk_strdata(d)[2] == '\0');
  CHECK(e->n == 0 && mk_strdata(e)[0] == '\0' && mk_equal(e, f));
  CHECK(!mk_equal(e, mk_nil()));
  mk_unref(a); mk_unref(b); mk_unref(c); mk_unref(d); mk_unref(e); mk_unref(f);
  CHECK(mk_term_live() == base);
}

/* Strings filled in place (mk_str_room, mk_str_fill): kept when the bytes
** fill at least three quarters of the room, copied into a term that fits
** otherwise, and equal to the same bytes made by mk_str either way. */
static void strings_in_place (void) {
  size_t base = mk_term_live(), n;
  mk_term *t, *u, *v;
  const size_t lens[] = { 4096, 3072, 3071, 600, 100, 0 };
  size_t i;
  for (i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    t = mk_str_room(4096);
    CHECK(t != NULL && mk_kindof(t) == MK_STR);
    for (n = 0; n < 4096; n++) mk_strdata(t)[n] = (char)(n * 7 + i);
    u = mk_str_fill(t, lens[i]);
    CHECK(u != NULL && u->n == lens[i] && mk_strdata(u)[lens[i]] == '\0');
    CHECK((u == t) == (lens[i] >= 3072));        /* kept, or a copy that fits */
    v = mk_str(mk_strdata(u), lens[i]);
    for (n = 0; n < lens[i]; n++)
      if (mk_strdata(u)[n] != (char)(n * 7 + i)) break;
    CHECK(n == lens[i]);
    CHECK(mk_equal(u, v) && mk_hash(u) == mk_hash(v));
    mk_unref(u); mk_unref(v);
  }
  /* a small room, hardly filled: a copy that fits */
  t = mk_str_room(300);
  memcpy(mk_strdata(t), "abc", 3);
  u = mk_str_fill(t, 3);
  CHECK(u != t && u->n == 3 && memcmp(mk_strdata(u), "abc", 4) == 0);
  mk_unref(u);
  /* a room freed unfilled */
  mk_unref(mk_str_room(65536));
  CHECK(mk_term_live() == base);
}

/* Long strings are hashed over a sample of their bytes (term.c, hbytes):
** equal ones still hash equal, and ones that differ only outside the
** sample are still unequal. */
static void long_strings (void) {
  size_t base = mk_term_live(), n = 4096, i;
  char *x = malloc(n), *y = malloc(n);
  mk_term *a, *b, *c, *d;
  for (i = 0; i < n; i++) x[i] = (char)('a' + i % 26);
  memcpy(y, x, n);
  a = mk_str(x, n);
  b = mk_str(y, n);
  CHECK(mk_equal(a, b) && mk_hash(a) == mk_hash(b));
  y[1001] ^= 1;                   /* between sampled words */
  c = mk_str(y, n);
  CHECK(!mk_equal(a, c));
  y[1001] ^= 1;
  y[n - 1] ^= 1;                  /* the tail is always hashed */
  d = mk_str(y, n);
  CHECK(!mk_equal(a, d) && mk_hash(a) != mk_hash(d));
  mk_unref(a); mk_unref(b); mk_unref(c); mk_unref(d);
  free(x); free(y);
  CHECK(mk_term_live() == base);
}

/* A string's hash, and so that of a compound holding one, is computed
** when first asked for; equality and hashes agree whichever of two equal
** terms was hashed first, or whether either was at all. */
static void lazy_hash (void) {
  size_t base = mk_term_live();
  mk_rtype *rt = mk_rtype_get("pkt", 3, 2, NULL);
  mk_term *s1 = mk_cstr("payload"), *s2 = mk_cstr("payload"), *s3 = mk_cstr("payload2");
  mk_term *r1, *r2, *r3, *q1, *q2;
  CHECK(s1->hash == 0 && s2->hash == 0);          /* made: not hashed */
  CHECK(mk_equal(s1, s2) && s1->hash == 0);       /* equality needs none */
  CHECK(!mk_equal(s1, s3));
  r1 = mk_rec(rt, mk_int(1), mk_ref(s1));
  CHECK(r1->hash == 0);                           /* an item is not hashed */
  CHECK(mk_hash(s2) != 0 && s2->hash == mk_hash(s2));
  r2 = mk_rec(rt, mk_int(1), mk_ref(s2));
  CHECK(r2->hash != 0);                           /* every item is: at once */
  CHECK(mk_equal(r1, r2) && mk_equal(r2, r1) && r1->hash == 0);
  CHECK(mk_hash(r1) == mk_hash(r2) && s1->hash == s2->hash);
  r3 = mk_rec(rt, mk_int(1), mk_ref(s3));
  CHECK(!mk_equal(r1, r3) && !mk_equal(r3, r2) && mk_hash(r3) != mk_hash(r1));
  /* one hashed, the other not, deeper down */
  q1 = mk_cstr("x");
  mk_hash(q1);
  q1 = mk_rec(rt, mk_ref(r1), q1);
  q2 = mk_rec(rt, mk_rec(rt, mk_int(1), mk_cstr("payload")), mk_cstr("x"));
  CHECK(q1->hash != 0 && q2->hash == 0);
  CHECK(mk_equal(q2, q1) && mk_hash(q2) == mk_hash(q1));
  mk_unref(s1); mk_unref(s2); mk_unref(s3);
  mk_unref(r1); mk_unref(r2); mk_unref(r3); mk_unref(q1); mk_unref(q2);
  mk_rtype_unref(rt);
  CHECK(mk_term_live() == base);
}

static void rtypes (void) {
  static const char *const names[] = { "from", "text" };
  static const char *const names2[] = { "who", "what" };
  mk_rtype *a = mk_rtype_get("chat-line", 9, 2, NULL);
  mk_rtype *b = mk_rtype_get("chat-line", 9, 2, names);
  mk_rtype *c = mk_rtype_get("chat-line", 9, 3, NULL);
  mk_rtype *d = mk_rtype_get("chat-lint", 9, 2, NULL);
  mk_rtype *e = mk_rtype_get("chat-line!", 9, 2, NULL);   /* length counts */
  /* labels are C strings: one holding a NUL is refused, not cut short */
  mk_rtype *z1 = mk_rtype_get("a\0b", 3, 0, NULL);
  mk_rtype *z2 = mk_rtype_get("\0", 1, 1, NULL);
  CHECK(a && b && c && d && e && z1 == NULL && z2 == NULL && errno == EINVAL);
  CHECK(a == b && a == e && a->refs == 3);
  CHECK(a != c && a != d);
  CHECK(a->arity == 2 && a->labellen == 9 && strcmp(a->label, "chat-line") == 0);
  CHECK(a->names != NULL);
  CHECK(mk_rtype_field(a, "from") == 0);
  CHECK(mk_rtype_field(a, "text") == 1);
  CHECK(mk_rtype_field(a, "who") == -1);
  CHECK(mk_rtype_field(c, "from") == -1);   /* unnamed */
  mk_rtype_unref(b);
  /* Named once, never renamed: other names are refused (EEXIST) and the
  ** type keeps its own; the same names again are the same type. */
  errno = 0;
  b = mk_rtype_get("chat-line", 9, 2, names2);
  CHECK(b == NULL && errno == EEXIST && a->refs == 2);
  CHECK(mk_rtype_field(a, "from") == 0 && mk_rtype_field(a, "what") == -1);
  b = mk_rtype_get("chat-line", 9, 2, names);
  CHECK(b == a);
  mk_rtype_unref(b);
  b = mk_rtype_get("chat-line", 9, 2, NULL);    /* NULL keeps them */
  CHECK(mk_rtype_field(a, "text") == 1);
  mk_rtype_ref(b);
  CHECK(a->refs == 4);
  mk_rtype_unref(b); mk_rtype_unref(b); mk_rtype_unref(e);
  CHECK(a->refs == 1);
  mk_rtype_unref(a); mk_rtype_unref(c); mk_rtype_unref(d);
  mk_rtype_unref(z1); mk_rtype_unref(z2);
  mk_rtype_ref(NULL);
  mk_rtype_unref(NULL);
  /* everything released: the type is made afresh, unnamed */
  a = mk_rtype_get("chat-line", 9, 2, NULL);
  CHECK(a != NULL && a->refs == 1 && a->names == NULL);
  mk_rtype_unref(a);
}

/* Many types force the intern table to grow (and shrink back). */
static void rtype_table (void) {
  enum { N = 3000 };
  static mk_rtype *rt[N];
  char buf[32];
  int i, ok = 1;
  for (i = 0; i < N; i++) {
    int len = snprintf(buf, sizeof buf, "t%d", i / 3);
    rt[i] = mk_rtype_get(buf, (size_t)len, (uint32_t)(i % 3), NULL);
  }
  for (i = 0; i < N; i++) {
    int len = snprintf(buf, sizeof buf, "t%d", i / 3);
    mk_rtype *again = mk_rtype_get(buf, (size_t)len, (uint32_t)(i % 3), NULL);
    ok &= again == rt[i] && rt[i]->refs == 2;
    ok &= i == 0 || rt[i] != rt[i - 1];
    mk_rtype_unref(again);
  }
  CHECK(ok);
  for (i = 0; i < N; i += 2) mk_rtype_unref(rt[i]);
  for (i = 1; i < N; i += 2) {
    int len = snprintf(buf, sizeof buf, "t%d", i / 3);
    mk_rtype *again = mk_rtype_get(buf, (size_t)len, (uint32_t)(i % 3), NULL);
    ok &= again == rt[i];
    mk_rtype_unref(again);
  }
  CHECK(ok);
  for (i = 1; i < N; i += 2) mk_rtype_unref(rt[i]);
}

static void records (void) {
  size_t base = mk_term_live();
  static const char *const names[] = { "x", "y" };
  mk_rtype *pt = mk_rtype_get("point", 5, 2, names);
  mk_rtype *unit = mk_rtype_get("unit", 4, 0, NULL);
  mk_term *a = mk_rec(pt, mk_int(1), mk_int(2));
  mk_term *b = mk_rec_new(pt);
  mk_term *u1 = mk_rec(unit), *u2 = mk_rec(unit);
  mk_term *w = mk_rec(pt, mk_int(1), mk_wild());
  CHECK(pt->refs == 4);   /* ours, a, b, w */
  CHECK(mk_kindof(a) == MK_REC && a->n == 2 && a->v.rt == pt && a->ground);
  CHECK(mk_items(a)[0]->v.i == 1 && mk_items(a)[1]->v.i == 2);
  CHECK(mk_items(a)[mk_rtype_field(pt, "y")]->v.i == 2);
  CHECK(mk_items(b)[0] == mk_nil() && mk_items(b)[1] == mk_nil());
  mk_set(b, 0, mk_int(1));
  mk_set(b, 1, mk_int(99));
  mk_set(b, 1, mk_int(2));   /* replaces (and releases) the 99 */
  b = mk_seal(b);
  CHECK(mk_equal(a, b) && mk_hash(a) == mk_hash(b));
  CHECK(mk_term_live() == base + 10);
  CHECK(u1 != u2 && mk_equal(u1, u2) && u1->n == 0 && u1->ground);
  CHECK(!w->ground && !mk_equal(a, w));
  CHECK(!mk_equal(a, u1));
  mk_unref(a); mk_unref(b); mk_unref(u1); mk_unref(u2); mk_unref(w);
  CHECK(pt->refs == 1 && unit->refs == 1);
  mk_rtype_unref(pt);
  mk_rtype_unref(unit);
  CHECK(mk_term_live() == base);
}

/* mk_set and mk_rec store a slot's first item over its nil without
** releasing anything, and release what a later mk_set replaces, a
** singleton or a counted term; a NULL item (a builder that failed) fails
** the seal; mk_rec is held to the limits as mk_seal is. */
static void slots (void) {
  size_t base = mk_term_live();
  static const char *const names[] = { "a", "b", "c" };
  mk_rtype *rt = mk_rtype_get("slots", 5, 3, names);
  mk_term *s = mk_seq_new(3), *r, *shared = mk_cstr("shared");
  size_t depth = mk_term_depth_limit();
  mk_set(s, 0, mk_wild());
  mk_set(s, 0, mk_ref(shared));       /* over a singleton */
  mk_set(s, 1, mk_int(7));
  mk_set(s, 1, mk_nil());             /* releases the 7 */
  mk_set(s, 2, mk_ref(shared));
  mk_set(s, 2, mk_eof());             /* releases one reference */
  CHECK(shared->refs == 2 && mk_term_live() == base + 2);
  s = mk_seal(s);
  CHECK(repr_is(mk_ref(s), "[\"shared\", nil, #eof]") && s->ground);
  CHECK(mk_rec(rt, mk_int(1), NULL, mk_ref(s)) == NULL && s->refs == 1);
  r = mk_seq_new(2);
  mk_set(r, 0, mk_ref(s));
  mk_set(r, 1, NULL);
  CHECK(mk_seal(r) == NULL && s->refs == 1);
  r = mk_rec(rt, mk_nil(), mk_ref(s), mk_wild());
  CHECK(r != NULL && repr_is(mk_ref(r), "slots(nil, [\"shared\", nil, #eof], _)"));
  CHECK(!r->ground && r->depth == 2 && mk_term_size(r) == 7 && s->refs == 2);
  CHECK(mk_term_set_depth_limit(1) == 0);
  CHECK(mk_rec(rt, mk_int(1), mk_ref(s), mk_nil()) == NULL && s->refs == 2);
  CHECK(mk_term_set_depth_limit(depth) == 0);
  mk_unref(r);
  mk_unref(s);
  CHECK(shared->refs == 1);
  mk_unref(shared);
  mk_rtype_unref(rt);
  CHECK(mk_term_live() == base);
}

static void sequences (void) {
  size_t base = mk_term_live();
  mk_term *s = mk_seq_new(3), *e = mk_seal(mk_seq_new(0)), *t;
  mk_set(s, 0, mk_int(1));
  mk_set(s, 1, mk_cstr("two"));
  mk_set(s, 2, mk_seal(mk_seq_new(0)));
  s = mk_seal(s);
  CHECK(mk_kindof(s) == MK_SEQ && s->n == 3 && s->ground);
  t = P("[1, \"two\", []]");
  CHECK(mk_equal(s, t) && mk_hash(s) == mk_hash(t));
  mk_unref(t);
  t = P("[1, \"two\"]");
  CHECK(!mk_equal(s, t));
  mk_unref(t);
  t = P("[1, \"two\", [_]]");
  CHECK(!mk_equal(s, t) && !t->ground);
  mk_unref(t);
  CHECK(e->n == 0 && e->ground);
  /* a sequence and a record with the same items differ */
  t = P("s(1, \"two\", [])");
  CHECK(!mk_equal(s, t));
  mk_unref(t);
  mk_unref(s); mk_unref(e);
  CHECK(mk_term_live() == base);
}

static void refcounts (void) {
  size_t base = mk_term_live();
  mk_term *leaf = mk_cstr("shared");
  mk_term *a = P("f([1, 2.5], g(_))");
  mk_term *s = mk_seq_new(2), *b;
  mk_set(s, 0, mk_ref(leaf));
  mk_set(s, 1, mk_ref(leaf));
  s = mk_seal(s);
  CHECK(leaf->refs == 3);
  b = mk_seq_new(2);
  mk_set(b, 0, mk_ref(s));
  mk_set(b, 1, mk_ref(a));
  b = mk_seal(b);
  CHECK(s->refs == 2 && a->refs == 2);
  mk_unref(s);
  mk_unref(a);
  CHECK(mk_items(b)[1] == a && mk_items(a)[0]->n == 2);   /* still alive */
  mk_unref(leaf);
  CHECK(mk_term_live() > base);
  mk_unref(b);
  CHECK(mk_term_live() == base);
  /* misuse of mk_set still steals */
  b = mk_seq_new(1);
  mk_set(b, 5, mk_int(1));
  mk_set(mk_nil(), 0, mk_int(1));
  mk_unref(mk_seal(b));
  CHECK(mk_term_live() == base);
}

/*
** {======================================================
** Depth: the field, the limit, and the C stack of every algorithm at the
** deepest term one may build (term.h, "Depth")
** =======================================================
*/

static int depth_is (const char *lit, unsigned want) {
  mk_term *t = P(lit);
  int ok = t->depth == want;
  if (!ok) fprintf(stderr, "  depth(%s) = %u, want %u\n", lit, t->depth, want);
  mk_unref(t);
  return ok;
}

static void depth_field (void) {
  size_t base = mk_term_live();
  mk_term *a, *b, *m;
  CHECK(sizeof(mk_term) == 8 + 8 + sizeof(int64_t));   /* no bigger for it */
  CHECK(depth_is("nil", 0) && depth_is("1", 0) && depth_is("2.5", 0));
  CHECK(depth_is("\"s\"", 0) && depth_is("_", 0) && depth_is("#eof", 0));
  CHECK(depth_is("[]", 1) && depth_is("f()", 1) && depth_is("[1, _]", 1));
  CHECK(depth_is("[[1], 2]", 2) && depth_is("[2, [1]]", 2));
  CHECK(depth_is("f(g(h()), 1, [])", 3) && depth_is("f(1, [[[_]]], g(2))", 4));
  /* a unifier made anew has its depth too */
  a = P("f(_, [1])");
  b = P("f([[2]], _)");
  m = mk_unify(a, b);
  CHECK(m != NULL && m != a && m != b && m->depth == 3);
  mk_unref(a); mk_unref(b); mk_unref(m);
  CHECK(mk_term_live() == base);
}

/* A chain cons(1, cons(1, ... nil)) of depth n (built under the limit). */
static mk_term *chain (mk_rtype *cons, size_t n, int left) {
  mk_term *t = mk_nil();
  size_t i;
  for (i = 0; i < n && t != NULL; i++)
    t = left ? mk_rec(cons, t, mk_int(1)) : mk_rec(cons, mk_int(1), t);
  return t;
}

static void depth_limit (void) {
  size_t base = mk_term_live();
  mk_rtype *cons = mk_rtype_get("cons", 4, 2, NULL);
  mk_term *a, *b, *s, *m, *w;
  CHECK(mk_term_depth_limit() == MK_TERM_DEPTH_DEFAULT);
  CHECK(mk_term_set_depth_limit(0) == -1 && mk_term_depth_limit() == MK_TERM_DEPTH_DEFAULT);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_MAX + 1) == -1);
  CHECK(mk_term_depth_limit() == MK_TERM_DEPTH_DEFAULT);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_MAX) == 0);
  CHECK(mk_term_depth_limit() == MK_TERM_DEPTH_MAX);
  CHECK(mk_term_set_depth_limit(1) == 0 && mk_term_depth_limit() == 1);
  CHECK(mk_term_set_depth_limit(5) == 0);
  /* up to the limit, and not one level more: mk_rec and mk_seal give
  ** NULL, and release what they were given */
  a = chain(cons, 5, 0);
  CHECK(a != NULL && a->depth == 5);
  CHECK(mk_rec(cons, mk_int(1), mk_ref(a)) == NULL && a->refs == 1);
  s = mk_seq_new(2);
  mk_set(s, 0, mk_cstr("item"));
  mk_set(s, 1, mk_ref(a));
  CHECK(mk_seal(s) == NULL && a->refs == 1);
  CHECK(mk_term_live() == base + 5 * 2);
  CHECK(chain(cons, 6, 1) == NULL && mk_term_live() == base + 5 * 2);
  CHECK(mk_seal(NULL) == NULL);
  /* lowering the limit leaves older terms whole, and their unifier is
  ** made even when it is deeper than the new limit */
  s = mk_seq_new(1);
  mk_set(s, 0, mk_wild());
  w = mk_rec(cons, mk_ref(mk_items(a)[1]), mk_seal(s));     /* depth 5 */
  b = P("cons(_, [7])");
  CHECK(w != NULL && w->depth == 5 && !w->ground);
  CHECK(mk_term_set_depth_limit(2) == 0);
  CHECK(mk_equal(a, a) && mk_unifies(w, b) && !mk_unifies(w, a));
  m = mk_unify(w, b);
  CHECK(m != NULL && m != w && m != b && m->depth == 5 && m->ground);
  CHECK(mk_items(m)[0] == mk_items(a)[1] && mk_items(m)[1] == mk_items(b)[1]);
  mk_unref(m); mk_unref(b); mk_unref(w); mk_unref(a);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  mk_rtype_unref(cons);
  CHECK(mk_term_live() == base);
}
/* Terms as deep as MK_TERM_DEPTH_MAX, nested on the left, where
** mk_equal and mk_unifies recurse (they loop on the last item). */
typedef struct Deep {
  mk_term *a, *b;     /* equal, built apart */
  mk_term *w;         /* a, with a wildcard at the bottom */
  mk_term *x, *y;     /* wildcards at every level, so merge builds anew */
  mk_term *m;         /* the unifier of x and y */
  char *s;            /* repr */
  size_t len;
  int r;
} Deep;

static void j_none (void *d) { (void)d; }
static void j_equal (void *d) { Deep *p = d; p->r = mk_equal(p->a, p->b); }
static void j_unifies (void *d) { Deep *p = d; p->r = mk_unifies(p->w, p->b); }
static void j_unify (void *d) { Deep *p = d; p->m = mk_unify(p->x, p->y); }
static void j_repr (void *d) { Deep *p = d; p->s = mk_repr(p->a, &p->len); }
static void j_repr_max (void *d) { Deep *p = d; p->s = mk_repr_max(p->a, 100, &p->len); }
static void j_free (void *d) { Deep *p = d; mk_unref(p->a); p->a = NULL; }

static mk_term *leftdeep (mk_rtype *cons, mk_term *bottom, mk_term *right) {
  mk_term *t = bottom;
  size_t i;
  for (i = 0; i < MK_TERM_DEPTH_MAX; i++) t = mk_rec(cons, t, mk_ref(right));
  mk_unref(right);
  return t;
}

static void deep_max (void) {
  static const struct { const char *name; void (*fn)(void *); } jobs[] = {
    { "mk_equal", j_equal }, { "mk_unifies", j_unifies }, { "mk_unify", j_unify },
    { "mk_repr", j_repr }, { "mk_repr_max", j_repr_max }, { "mk_unref", j_free } };
  size_t base = mk_term_live(), none, i;
  mk_rtype *cons = mk_rtype_get("cons", 4, 2, NULL);
  Deep d;
  memset(&d, 0, sizeof d);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_MAX) == 0);
  d.a = leftdeep(cons, mk_int(0), mk_int(1));
  d.b = leftdeep(cons, mk_int(0), mk_int(1));
  d.w = leftdeep(cons, mk_wild(), mk_int(1));
  d.x = leftdeep(cons, mk_wild(), mk_wild());
  d.y = leftdeep(cons, mk_int(0), mk_wild());
  CHECK(d.a && d.b && d.w && d.x && d.y && d.a->depth == MK_TERM_DEPTH_MAX);
  CHECK(d.a != NULL && mk_rec(cons, mk_ref(d.a), mk_nil()) == NULL);
  none = stack_used(j_none, &d);
  for (i = 0; i < sizeof jobs / sizeof jobs[0] && d.a != NULL; i++) {
    size_t used = stack_used(jobs[i].fn, &d);
    size_t perlevel = used > none ? (used - none) / MK_TERM_DEPTH_MAX : 0;
    if (used == SIZE_MAX || perlevel > PERLEVEL)
      fprintf(stderr, "  %s: %zu bytes of stack a level (bound %d)\n", jobs[i].name,
              perlevel, PERLEVEL);
    CHECK(used != SIZE_MAX && perlevel <= PERLEVEL);
    if (getenv("MK_SHOW_STACK"))
      fprintf(stderr, "  %s: %zu bytes of stack a level\n", jobs[i].name, perlevel);
    if (jobs[i].fn == j_equal) CHECK(d.r == 1);
    if (jobs[i].fn == j_unifies) CHECK(d.r == 1);
    if (jobs[i].fn == j_unify)
      CHECK(d.m != NULL && d.m->depth == MK_TERM_DEPTH_MAX && !d.m->ground);
    if (jobs[i].fn == j_repr)
      CHECK(d.s != NULL && d.len == MK_TERM_DEPTH_MAX * strlen("cons(, 1)") + 1);
    if (jobs[i].fn == j_repr_max)
      CHECK(d.s != NULL && d.len == 103 && strcmp(d.s + 100, "...") == 0 &&
            strncmp(d.s, "cons(cons(", 10) == 0);
    free(d.s);
    d.s = NULL;
  }
  CHECK(d.a == NULL);
  mk_unref(d.b); mk_unref(d.w); mk_unref(d.x); mk_unref(d.y); mk_unref(d.m);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  mk_rtype_unref(cons);
  CHECK(mk_term_live() == base);
}

/*
** {======================================================
** Size: the field, the limit, and unifiers larger than their inputs
** (term.h, "Size")
** =======================================================
*/

static int size_is (const char *lit, size_t want) {
  mk_term *t = P(lit);
  int ok = mk_term_size(t) == want;
  if (!ok) fprintf(stderr, "  size(%s) = %zu, want %zu\n", lit, mk_term_size(t), want);
  mk_unref(t);
  return ok;
}

/* pair(t, t), k times over (t stolen): 2^k * (size(t) + 1) - 1 nodes in
** k terms more than t has, or NULL (all released) past the size limit. */
static mk_term *doubled (mk_rtype *pair, mk_term *t, int k) {
  while (k-- > 0 && t != NULL) t = mk_rec(pair, t, mk_ref(t));
  return t;
}

/* The sequence of n items: `at` (stolen) at index i, wildcards elsewhere. */
static mk_term *slot (uint32_t n, uint32_t i, mk_term *at) {
  mk_term *s = mk_seq_new(n);
  uint32_t k;
  for (k = 0; k < n; k++) mk_set(s, k, k == i ? at : mk_wild());
  return mk_seal(s);
}

static void size_field (void) {
  size_t base = mk_term_live();
  mk_rtype *pair = mk_rtype_get("pair", 4, 2, NULL);
  mk_term *t, *u, *a, *b;
  CHECK(size_is("nil", 1) && size_is("-7", 1) && size_is("2.5", 1) && size_is("_", 1));
  CHECK(size_is("#eof", 1) && size_is("\"a string of some length\"", 1));
  CHECK(size_is("[]", 1) && size_is("f()", 1) && size_is("[1, _]", 3));
  CHECK(size_is("f(g(h()), 1, [])", 5) && size_is("[[1, 2], f(3, [4])]", 8));
  /* a shared item counts once for every place it occurs */
  t = doubled(pair, mk_cstr("x"), 19);
  CHECK(t != NULL && mk_term_size(t) == ((size_t)1 << 20) - 1);
  CHECK(mk_term_live() == base + 20);
  CHECK(mk_term_size(mk_items(t)[0]) == ((size_t)1 << 19) - 1);
  /* a unifier has its size too: the subterms the wildcards took */
  a = slot(2, 0, mk_ref(mk_items(t)[0]));
  b = slot(2, 1, mk_ref(mk_items(t)[0]));
  u = mk_unify(a, b);
  CHECK(a != NULL && mk_term_size(a) == ((size_t)1 << 19) + 1);
  CHECK(u != NULL && mk_term_size(u) == mk_term_size(t));
  CHECK(u != NULL && mk_items(u)[0] == mk_items(t)[0] && mk_items(u)[1] == mk_items(t)[0]);
  mk_unref(a); mk_unref(b); mk_unref(u); mk_unref(t);
  mk_rtype_unref(pair);
  CHECK(mk_term_live() == base);
}

static void size_limit (void) {
  size_t base = mk_term_live();
  mk_rtype *pair = mk_rtype_get("pair", 4, 2, NULL);
  mk_term *t, *s, *a, *b, *u;
  CHECK(mk_term_size_limit() == MK_TERM_SIZE_DEFAULT && MK_TERM_SIZE_DEFAULT == 1048576);
  CHECK(mk_term_set_size_limit(0) == -1 && mk_term_size_limit() == MK_TERM_SIZE_DEFAULT);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_MAX + 1) == -1);
  CHECK(mk_term_size_limit() == MK_TERM_SIZE_DEFAULT);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_MAX) == 0 && mk_term_size_limit() == MK_TERM_SIZE_MAX);
  CHECK(mk_term_set_size_limit(1) == 0 && mk_term_size_limit() == 1);
  t = mk_seal(mk_seq_new(0));      /* [] is one node */
  CHECK(t != NULL && mk_term_size(t) == 1);
  mk_unref(t);
  CHECK(mk_rec(pair, mk_int(1), mk_int(2)) == NULL && mk_term_live() == base);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
  /* The doubling bomb stops at the level that crosses the limit: mk_rec
  ** and mk_seal give NULL and release what they were given. */
  t = doubled(pair, mk_cstr("x"), 19);
  CHECK(t != NULL && mk_term_live() == base + 20);
  CHECK(mk_rec(pair, mk_ref(t), mk_ref(t)) == NULL && t->refs == 1);
  CHECK(mk_term_live() == base + 20);
  CHECK(doubled(pair, mk_cstr("x"), 60) == NULL && mk_term_live() == base + 20);
  s = slot(1, 0, mk_ref(t));       /* exactly the limit */
  CHECK(s != NULL && mk_term_size(s) == MK_TERM_SIZE_DEFAULT);
  mk_unref(s);
  s = mk_seq_new(2);               /* one node more */
  mk_set(s, 0, mk_ref(t));
  CHECK(mk_seal(s) == NULL && t->refs == 1 && mk_term_live() == base + 20);
  /* A unifier is made whatever the limit: [h, h, h] from [_, h, h] and
  ** [h, _, _] has more nodes than the limit, and [h, h] from [h, _] and
  ** [_, h] more than a limit lowered since its inputs were made.  But no
  ** new term may hold one unless the limit allows. */
  a = mk_seq_new(3);
  mk_set(a, 0, mk_wild());
  mk_set(a, 1, mk_ref(mk_items(t)[0]));
  mk_set(a, 2, mk_ref(mk_items(t)[0]));
  a = mk_seal(a);
  b = slot(3, 0, mk_ref(mk_items(t)[0]));
  CHECK(a != NULL && b != NULL && mk_term_size(a) == MK_TERM_SIZE_DEFAULT);
  u = mk_unify(a, b);
  CHECK(u != NULL && mk_term_size(u) == 3 * (MK_TERM_SIZE_DEFAULT / 2 - 1) + 1 && u->ground);
  CHECK(u != NULL && slot(1, 0, mk_ref(u)) == NULL && u->refs == 1);
  mk_unref(u); mk_unref(a); mk_unref(b);
  a = slot(2, 0, mk_ref(mk_items(t)[0]));
  b = slot(2, 1, mk_ref(mk_items(t)[0]));
  CHECK(mk_term_set_size_limit(3) == 0);
  CHECK(mk_equal(t, t) && mk_unifies(a, b) && !mk_unifies(a, t));
  u = mk_unify(a, b);
  CHECK(u != NULL && mk_term_size(u) == mk_term_size(t));
  CHECK(u != NULL && mk_items(u)[0] == mk_items(t)[0] && mk_items(u)[1] == mk_items(t)[0]);
  CHECK(u != NULL && slot(1, 0, mk_ref(u)) == NULL && u->refs == 1);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
  s = slot(1, 0, mk_ref(u));
  CHECK(s != NULL && mk_term_size(s) == MK_TERM_SIZE_DEFAULT);
  mk_unref(s); mk_unref(u); mk_unref(a); mk_unref(b); mk_unref(t);
  mk_rtype_unref(pair);
  CHECK(mk_term_live() == base);
}

/*
** No term reaches 2 * MK_TERM_SIZE_MAX nodes.  Two terms of at most
** MK_TERM_SIZE_MAX nodes always have their unifier (it is smaller); only
** unifiers fed back as inputs can ask for more, and are refused.  Every
** term here shares its items: they take a few hundred bytes.
*/
static void size_unify_max (void) {
  size_t base = mk_term_live();
  mk_rtype *pair = mk_rtype_get("pair", 4, 2, NULL);
  mk_term *t22, *z, *u, *a, *b, *c;
  size_t zs;
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_MAX) == 0);
  CHECK(doubled(pair, mk_cstr("x"), 24) == NULL);   /* 2^25 - 1: past the limit */
  t22 = doubled(pair, mk_cstr("x"), 22);
  z = mk_rec(pair, mk_ref(t22), mk_ref(mk_items(t22)[0]));   /* 1.5 * 2^23 - 1 */
  CHECK(z != NULL && t22 != NULL);
  zs = mk_term_size(z);
  CHECK(zs == ((size_t)3 << 22) - 1);
  /* [z, _] and [_, z]: within the limit; their unifier [z, z] is not */
  a = slot(2, 0, mk_ref(z));
  b = slot(2, 1, mk_ref(z));
  u = mk_unify(a, b);
  CHECK(u != NULL && mk_term_size(u) == 2 * zs + 1 && mk_term_size(u) > MK_TERM_SIZE_MAX);
  mk_unref(a); mk_unref(b); mk_unref(u);
  /* [z, z, _] (a unifier) and [_, _, z] unify, but into 3 z + 1 nodes */
  a = slot(3, 0, mk_ref(z));
  b = slot(3, 1, mk_ref(z));
  c = slot(3, 2, mk_ref(z));
  u = mk_unify(a, b);
  CHECK(u != NULL && mk_term_size(u) == 2 * zs + 2 && !u->ground);
  CHECK(u != NULL && mk_unifies(u, c) && mk_unify(u, c) == NULL && mk_unify(c, u) == NULL);
  mk_unref(a); mk_unref(b); mk_unref(c); mk_unref(u);
  mk_unref(z); mk_unref(t22);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
  mk_rtype_unref(pair);
  CHECK(mk_term_live() == base);
}

static void equal_hash (void) {
  static const char *const lits[] = {
    "nil", "true", "false", "0", "1", "-1", "0.5", "-0.5", "\"\"", "\"a\"",
    "\"b\"", "\"a\\0\"", "[]", "[[]]", "[1]", "[1, 2]", "[2, 1]", "f()",
    "f(1)", "g(1)", "f(1, 2)", "f([1], 2)", "[f(1), 2]", "_", "[_]", "f(_)",
    "#eof", "inf", "-inf", "nan", "1e300", "[nil]", "[false]", "[\"1\"]",
  };
  size_t base = mk_term_live(), n = sizeof lits / sizeof lits[0], i, j;
  int ok = 1;
  for (i = 0; i < n; i++) {
    for (j = 0; j < n; j++) {
      mk_term *a = P(lits[i]), *b = P(lits[j]);
      int eq = mk_equal(a, b);
      ok &= eq == (i == j);
      ok &= eq == mk_equal(b, a);
      ok &= !eq || mk_hash(a) == mk_hash(b);
      if (i != j && mk_hash(a) == mk_hash(b))
        fprintf(stderr, "  (hash collision %s %s)\n", lits[i], lits[j]);
      if (eq != (i == j)) fprintf(stderr, "  equal(%s, %s) = %d\n", lits[i], lits[j], eq);
      mk_unref(a); mk_unref(b);
    }
  }
  CHECK(ok);
  CHECK(mk_term_live() == base);
}

static void unify (void) {
  size_t base = mk_term_live();
  CHECK(unifies_s("_", "_") == 1);
  CHECK(unifies_s("_", "1") == 1);
  CHECK(unifies_s("_", "f(1, [2])") == 1);
  CHECK(unifies_s("1", "1") == 1);
  CHECK(unifies_s("1.0", "1") == 1);
  CHECK(unifies_s("f(_, 1)", "f(2, _)") == 1);
  CHECK(unifies_s("f(_, _)", "f(2, 3)") == 1);
  CHECK(unifies_s("[_, [1, _]]", "[[2], [_, 3]]") == 1);
  CHECK(unifies_s("f(g(_, h(_)), [1, _])", "f(g(1, _), [_, [2]])") == 1);
  CHECK(unifies_s("f(g(_, h(1)), _)", "f(g(2, h(_)), [[[_]]])") == 1);
  CHECK(unifies_s("f([_], _)", "f(_, [_])") == 1);
  CHECK(unifies_s("nan", "nan") == 1);
  CHECK(unifies_s("\"a\\0b\"", "\"a\\0b\"") == 1);
  CHECK(unifies_s("#eof", "_") == 1);
  /* failures */
  CHECK(unifies_s("1", "2") == 0);
  CHECK(unifies_s("1", "1.5") == 0);
  CHECK(unifies_s("1", "\"1\"") == 0);
  CHECK(unifies_s("nil", "false") == 0);
  CHECK(unifies_s("true", "false") == 0);
  CHECK(unifies_s("#eof", "nil") == 0);
  CHECK(unifies_s("\"a\\0b\"", "\"a\\0c\"") == 0);
  CHECK(unifies_s("f(_)", "f(_, _)") == 0);        /* arity */
  CHECK(unifies_s("f(_)", "g(_)") == 0);           /* label */
  CHECK(unifies_s("[_]", "[_, _]") == 0);          /* length */
  CHECK(unifies_s("[]", "[_]") == 0);
  CHECK(unifies_s("f(_)", "[_]") == 0);            /* kind */
  CHECK(unifies_s("f()", "[]") == 0);
  CHECK(unifies_s("f(1, _)", "f(2, _)") == 0);
  CHECK(unifies_s("f(_, g(1))", "f(_, g(2))") == 0);
  CHECK(unifies_s("[_, [1, _]]", "[_, [2, _]]") == 0);
  CHECK(unifies_s("f(g(_, h(1)), _)", "f(g(2, h(2)), _)") == 0);
  CHECK(unifies_s("f(1, 2)", "f(1, 3)") == 0);
  CHECK(mk_term_live() == base);
}

static void mgu (void) {
  size_t base = mk_term_live();
  mk_term *a, *b, *m;
  CHECK(mgu_is("_", "_", "_"));
  CHECK(mgu_is("_", "f(1)", "f(1)"));
  CHECK(mgu_is("f(_, 1)", "f(2, _)", "f(2, 1)"));
  CHECK(mgu_is("f(_, _)", "f(_, 3)", "f(_, 3)"));
  CHECK(mgu_is("[_, [1, _]]", "[[2], [_, 3]]", "[[2], [1, 3]]"));
  CHECK(mgu_is("f(g(_, h(_)), [1, _])", "f(g(1, _), [_, [2]])",
               "f(g(1, h(_)), [1, [2]])"));
  CHECK(mgu_is("[_, [_, x(_)]]", "[_, [y(), x(_)]]", "[_, [y(), x(_)]]"));
  CHECK(mgu_is("f(1)", "f(2)", NULL));
  CHECK(mgu_is("f(_, g(1))", "f(2, g(_, _))", NULL));
  /* sharing: a side that is already the answer is returned itself */
  a = P("f(1, [2])");
  b = P("f(_, [_])");
  m = mk_unify(a, b);
  CHECK(m == a && a->refs == 2);
  mk_unref(m);
  m = mk_unify(b, a);
  CHECK(m == a);
  mk_unref(m);
  mk_unref(b);
  b = P("_");
  m = mk_unify(b, a);
  CHECK(m == a);
  mk_unref(m);
  mk_unref(b);
  mk_unref(a);
  a = P("f(g(1), _)");
  b = P("f(_, [h(_)])");
  m = mk_unify(a, b);
  CHECK(m != a && m != b && m->ground == 0);
  CHECK(mk_items(m)[0] == mk_items(a)[0] && mk_items(m)[1] == mk_items(b)[1]);
  mk_unref(m);
  mk_unref(b);
  b = P("f(_, _)");  /* less specific: a itself */
  m = mk_unify(a, b);
  CHECK(m == a);
  mk_unref(m);
  mk_unref(a);
  mk_unref(b);
  /* One side is the answer up to an item, then neither is: the node is
  ** made there, its first items taken from the side that was (each
  ** order), the rest merged. */
  CHECK(mgu_is("f(1, _, _)", "f(_, _, 3)", "f(1, _, 3)"));
  CHECK(mgu_is("[g(1), _, [_, 2]]", "[g(_), h(), [3, _]]", "[g(1), h(), [3, 2]]"));
  a = P("f(g(1), _, _, _)");
  b = P("f(_, [2], _, k(_))");
  m = mk_unify(a, b);
  CHECK(m != a && m != b);
  CHECK(mk_items(m)[0] == mk_items(a)[0] && mk_items(m)[1] == mk_items(b)[1] &&
        mk_items(m)[3] == mk_items(b)[3]);
  mk_unref(m);
  m = mk_unify(b, a);
  CHECK(mk_items(m)[0] == mk_items(a)[0] && mk_items(m)[1] == mk_items(b)[1]);
  mk_unref(m);
  mk_unref(a);
  mk_unref(b);
  CHECK(mk_term_live() == base);
}

static void repr (void) {
  size_t base = mk_term_live();
  mk_rtype *rt;
  CHECK(repr_is(mk_nil(), "nil"));
  CHECK(repr_is(mk_bool(1), "true"));
  CHECK(repr_is(mk_bool(0), "false"));
  CHECK(repr_is(mk_wild(), "_"));
  CHECK(repr_is(mk_eof(), "#eof"));
  CHECK(repr_is(mk_int(0), "0"));
  CHECK(repr_is(mk_int(-42), "-42"));
  CHECK(repr_is(mk_int(INT64_MIN), "-9223372036854775808"));
  CHECK(repr_is(mk_int(INT64_MAX), "9223372036854775807"));
  CHECK(repr_is(mk_float(0.5), "0.5"));
  CHECK(repr_is(mk_float(-2.25), "-2.25"));
  CHECK(repr_is(mk_float(0.1), "0.10000000000000001"));
  CHECK(repr_is(mk_float(1e300), "1.0000000000000001e+300"));
  CHECK(repr_is(mk_float(9223372036854775808.0), "9.2233720368547758e+18"));
  CHECK(repr_is(mk_float(3.0), "3"));   /* it is an integer */
  CHECK(repr_is(mk_float(INFINITY), "inf"));
  CHECK(repr_is(mk_float(-INFINITY), "-inf"));
  CHECK(repr_is(mk_float(NAN), "nan"));
  CHECK(repr_is(mk_float(-NAN), "nan"));
  CHECK(repr_is(mk_cstr(""), "\"\""));
  CHECK(repr_is(mk_cstr("hi there"), "\"hi there\""));
  CHECK(repr_is(mk_cstr("q\"b\\s"), "\"q\\\"b\\\\s\""));
  CHECK(repr_is(mk_cstr("a\nb\tc\rd"), "\"a\\nb\\tc\\rd\""));
  CHECK(repr_is(mk_str("\0\x01\x1f\x7f\x80\xff", 6), "\"\\x00\\x01\\x1f\\x7f\\x80\\xff\""));
  CHECK(repr_is(mk_seal(mk_seq_new(0)), "[]"));
  CHECK(repr_is(mk_seal(mk_seq_new(2)), "[nil, nil]"));
  rt = mk_rtype_get("chat-line", 9, 2, NULL);
  CHECK(repr_is(mk_rec(rt, mk_cstr("bob"), mk_cstr("hi")), "chat-line(\"bob\", \"hi\")"));
  mk_rtype_unref(rt);
  rt = mk_rtype_get("tick", 4, 0, NULL);
  CHECK(repr_is(mk_rec(rt), "tick()"));
  mk_rtype_unref(rt);
  CHECK(roundtrip("[1, 2, _]"));
  CHECK(roundtrip("f(g(_, h(\"x\\n\")), [1.5, [], [[#eof]]], nil, true, false)"));
  CHECK(mk_term_live() == base);
}

/* mk_read reads back what mk_repr writes, and says where text is wrong. */
static int reads_back (mk_term *t) {
  size_t n, pos;
  const char *err;
  char *s = mk_repr(t, &n);
  mk_term *r = mk_read(s, n, &pos, &err);
  int ok = r != NULL && mk_equal(r, t) && pos == n && err == NULL;
  if (!ok) fprintf(stderr, "  mk_read(%s) failed: %s\n", s, r ? "another term" : err);
  free(s);
  mk_unref(r);
  mk_unref(t);
  return ok;
}

static int read_fails (const char *text, size_t at, const char *why) {
  size_t pos;
  const char *err;
  mk_term *t = mk_read(text, strlen(text), &pos, &err);
  int ok = t == NULL && pos == at && err != NULL && strstr(err, why) != NULL;
  if (!ok) fprintf(stderr, "  mk_read(%s): %s at %zu\n", text, t ? "a term" : err, pos);
  mk_unref(t);
  return ok;
}

static void read_terms (void) {
  size_t base = mk_term_live(), depth = mk_term_depth_limit(), i;
  mk_rtype *rt = mk_rtype_get("tcp-driver:stop", 15, 1, NULL);
  char deep[64];
  mk_term *t;
  CHECK(reads_back(mk_nil()));
  CHECK(reads_back(mk_bool(1)));
  CHECK(reads_back(mk_bool(0)));
  CHECK(reads_back(mk_wild()));
  CHECK(reads_back(mk_eof()));
  CHECK(reads_back(mk_int(INT64_MIN)));
  CHECK(reads_back(mk_int(INT64_MAX)));
  CHECK(reads_back(mk_float(0.1)));
  CHECK(reads_back(mk_float(-1e300)));
  CHECK(reads_back(mk_float(INFINITY)));
  CHECK(reads_back(mk_float(-INFINITY)));
  CHECK(reads_back(mk_str("\0\x01\x1f\x7f\x80\xff\"\\\n\t\r ok", 15)));
  CHECK(reads_back(mk_rec(rt, mk_seal(mk_seq_new(0)))));
  CHECK(reads_back(P("f(g(_, h(\"x\\n\")), [1.5, [], [[#eof]]], nil, true, false)")));
  /* NaN is not equal to itself as a number, but is one term. */
  t = mk_read("nan", 3, NULL, NULL);
  CHECK(t != NULL && mk_kindof(t) == MK_FLOAT && isnan(t->v.f));
  mk_unref(t);
  /* Blanks anywhere between tokens; a label's record type is the one
  ** market.record makes (by label and arity). */
  t = mk_read(" tcp-driver:stop ( [ 1 ,2 ] ) ", 30, NULL, NULL);
  CHECK(t != NULL && mk_kindof(t) == MK_REC && t->v.rt == rt);
  mk_unref(t);
  mk_rtype_unref(rt);
  /* A label that is not a plain word is written as a string: every one
  ** reads back, and two records never print alike (the timer driver keys
  ** its table by the text: [a(1), b()] and "a(1), b"() were one key). */
  {
    static const char *const odd[] = { "a(1), b", "x\n2026 forged\x1b[31m", "", "caf\xc3\xa9",
                                       "q\"uote", "sp ace", "[", "f(" };
    mk_term *a, *b;
    char *ra, *rb;
    for (i = 0; i < sizeof odd / sizeof odd[0]; i++) {
      mk_rtype *ot = mk_rtype_get(odd[i], strlen(odd[i]), 1, NULL);
      CHECK(reads_back(mk_rec(ot, mk_int(1))));
      mk_rtype_unref(ot);
    }
    a = P("[a(1), b()]");
    rt = mk_rtype_get("a(1), b", 7, 0, NULL);
    b = mk_seq_new(1);
    mk_set(b, 0, mk_rec(rt));
    b = mk_seal(b);
    mk_rtype_unref(rt);
    ra = mk_repr(a, NULL);
    rb = mk_repr(b, NULL);
    CHECK(strcmp(ra, "[a(1), b()]") == 0 && strcmp(rb, "[\"a(1), b\"()]") == 0);
    free(ra);
    free(rb);
    mk_unref(a);
    mk_unref(b);
    rt = mk_rtype_get("x\ny", 3, 0, NULL);
    a = mk_rec(rt);
    mk_rtype_unref(rt);
    ra = mk_repr(a, NULL);
    CHECK(strcmp(ra, "\"x\\ny\"()") == 0);
    free(ra);
    mk_unref(a);
  }
  CHECK(read_fails("\"a\\x00b\"(1)", 8, "must not contain a NUL"));
  CHECK(read_fails("", 0, "expected a term"));
  CHECK(read_fails("chat(_,", 7, "expected a term"));
  CHECK(read_fails("[1 2]", 3, "expected ',' or ']'"));
  CHECK(read_fails("f(1]", 3, "expected ',' or ')'"));
  CHECK(read_fails("\"abc", 4, "unterminated string"));
  CHECK(read_fails("\"\\q\"", 2, "unknown escape"));
  CHECK(read_fails("\"\\x4\"", 3, "\\x needs two hex digits"));
  CHECK(read_fails("nul", 0, "not a term"));
  CHECK(read_fails("1 2", 2, "more text after the term"));
  CHECK(read_fails("99999999999999999999999e99999", 0, "not a term"));
  /* Past the depth limit: refused before the reader recurses further. */
  CHECK(mk_term_set_depth_limit(3) == 0);
  CHECK(read_fails("[[[[1]]]]", 3, "deeper than the depth limit"));
  CHECK(read_fails("[[[[[[[[[[[[", 3, "deeper than the depth limit"));
  t = mk_read("[[[1]]]", 7, NULL, NULL);
  CHECK(t != NULL);
  mk_unref(t);
  CHECK(mk_term_set_depth_limit(depth) == 0);
  for (i = 0; i < sizeof deep - 1; i++) deep[i] = '[';
  CHECK(mk_read(deep, sizeof deep - 1, NULL, NULL) == NULL);
  CHECK(mk_read(NULL, 0, NULL, NULL) == NULL);
  CHECK(mk_term_live() == base);
}

/* A long repr exercises the buffer's growth. */
static void repr_long (void) {
  size_t base = mk_term_live(), len, i;
  mk_term *s = mk_seq_new(5000);
  char *r;
  int ok = 1;
  for (i = 0; i < 5000; i++) mk_set(s, (uint32_t)i, mk_int(7));
  s = mk_seal(s);
  r = mk_repr(s, &len);
  CHECK(r != NULL && len == 2 + 5000 + 2 * 4999 && strlen(r) == len);
  for (i = 1; r && i + 1 < len; i += 3) ok &= r[i] == '7';
  CHECK(ok);
  free(r);
  mk_unref(s);
  CHECK(mk_term_live() == base);
}

/*
** {======================================================
** Randomised cross-check of unification against a naive model
** =======================================================
*/

static uint64_t rng;

static uint32_t rnd (uint32_t n) {
  rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
  return (uint32_t)((rng * 0x2545F4914F6CDD1Dull) >> 33) % n;
}

static mk_rtype *rts[4];

static mk_term *gen (int depth) {
  uint32_t r = rnd(100);
  if (r < 15) return mk_wild();
  if (depth == 0 || r < 50) {
    switch (rnd(6)) {
      case 0: return mk_nil();
      case 1: return mk_bool((int)rnd(2));
      case 2: return mk_int(rnd(3));
      case 3: return mk_float(rnd(2) + 0.5);
      case 4: return mk_str("ab", rnd(3));
      default: return mk_eof();
    }
  }
  else {
    mk_term *t;
    uint32_t i;
    if (r < 75) t = mk_rec_new(rts[rnd(4)]);
    else t = mk_seq_new(rnd(3));
    for (i = 0; i < t->n; i++) mk_set(t, i, gen(depth - 1));
    return mk_seal(t);
  }
}

/* The model: a plain recursive reading of the rules. */
static int naive_unifies (const mk_term *a, const mk_term *b) {
  uint32_t i;
  if (a->kind == MK_WILD || b->kind == MK_WILD) return 1;
  if (a->kind != b->kind) return 0;
  switch (a->kind) {
    case MK_INT: return a->v.i == b->v.i;
    case MK_FLOAT: return a->v.f == b->v.f;
    case MK_STR: return a->n == b->n && memcmp(mk_strdata(a), mk_strdata(b), a->n) == 0;
    case MK_REC: if (a->v.rt != b->v.rt) return 0; /* FALLTHROUGH */
    case MK_SEQ:
      if (a->n != b->n) return 0;
      for (i = 0; i < a->n; i++)
        if (!naive_unifies(mk_items(a)[i], mk_items(b)[i])) return 0;
      return 1;
    default: return 1;
  }
}

static int naive_ground (const mk_term *t) {
  uint32_t i;
  if (t->kind == MK_WILD) return 0;
  if (t->kind == MK_REC || t->kind == MK_SEQ)
    for (i = 0; i < t->n; i++) if (!naive_ground(mk_items(t)[i])) return 0;
  return 1;
}

/* m is the pointwise merge of a and b: m has a wildcard exactly where
** both do, and elsewhere the non-wild side's atom or shape. */
static int is_merge (const mk_term *m, const mk_term *a, const mk_term *b) {
  uint32_t i;
  if (a->kind == MK_WILD && b->kind == MK_WILD) return m->kind == MK_WILD;
  if (a->kind == MK_WILD) return mk_equal(m, b);
  if (b->kind == MK_WILD) return mk_equal(m, a);
  if (m->kind != a->kind || m->n != a->n || m->ground != naive_ground(m)) return 0;
  if (m->kind == MK_REC && m->v.rt != a->v.rt) return 0;
  if (m->kind != MK_REC && m->kind != MK_SEQ) return mk_equal(m, a) && mk_equal(m, b);
  for (i = 0; i < m->n; i++)
    if (!is_merge(mk_items(m)[i], mk_items(a)[i], mk_items(b)[i])) return 0;
  return 1;
}

static void random_unify (void) {
  static const uint64_t seeds[] = { 1, 2, 3, 0x9e3779b97f4a7c15ull, 12345 };
  size_t base = mk_term_live(), s;
  int ok = 1, hits = 0;
  rts[0] = mk_rtype_get("p", 1, 0, NULL);
  rts[1] = mk_rtype_get("p", 1, 2, NULL);
  rts[2] = mk_rtype_get("q", 1, 2, NULL);
  rts[3] = mk_rtype_get("q", 1, 3, NULL);
  for (s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
    int k;
    rng = seeds[s];
    for (k = 0; k < 4000; k++) {
      mk_term *a = gen(4), *b = gen(4), *m1, *m2;
      int u = naive_unifies(a, b);
      hits += u;
      ok &= mk_unifies(a, b) == u && mk_unifies(b, a) == u;
      ok &= a->ground == naive_ground(a);
      ok &= mk_unifies(a, a) && mk_equal(a, a);
      m1 = mk_unify(a, b);
      m2 = mk_unify(b, a);
      ok &= (m1 != NULL) == u && (m2 != NULL) == u;
      if (u) {
        ok &= is_merge(m1, a, b) && mk_equal(m1, m2) && mk_hash(m1) == mk_hash(m2);
        ok &= mk_unifies(m1, a) && mk_unifies(m1, b);
      }
      if (mk_equal(a, b)) ok &= mk_hash(a) == mk_hash(b) && u;
      if (!ok) {
        char *x = mk_repr(a, NULL), *y = mk_repr(b, NULL);
        fprintf(stderr, "  seed %zu case %d: %s ~ %s\n", s, k, x, y);
        free(x); free(y);
        k = 1 << 30;
      }
      mk_unref(a); mk_unref(b); mk_unref(m1); mk_unref(m2);
    }
  }
  CHECK(ok);
  CHECK(hits > 500);   /* the generator does produce unifiable pairs */
  for (s = 0; s < 4; s++) mk_rtype_unref(rts[s]);
  CHECK(mk_term_live() == base);
}

/* }====================================================== */

int main (void) {
  RUN(singletons);
  RUN(integers);
  RUN(floats);
  RUN(strings);
  RUN(strings_in_place);
  RUN(long_strings);
  RUN(lazy_hash);
  RUN(rtypes);
  RUN(rtype_table);
  RUN(records);
  RUN(slots);
  RUN(sequences);
  RUN(refcounts);
  RUN(depth_field);
  RUN(depth_limit);
  RUN(deep_max);
  RUN(size_field);
  RUN(size_limit);
  RUN(size_unify_max);
  RUN(equal_hash);
  RUN(unify);
  RUN(mgu);
  RUN(repr);
  RUN(repr_long);
  RUN(read_terms);
  RUN(random_unify);
  return CHECK_DONE();
}

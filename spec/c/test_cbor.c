/*
** test_cbor.c: terms to CBOR and back (runtime/cbor.h; docs/cluster.md,
** "Terms on the wire").  Every kind round-trips; the bytes are those the
** documentation gives; shared subterms are written out and come back
** equal; the depth and size limits hold on the way in; and malformed,
** truncated or hostile input is refused with a reason, allocating
** nothing for the lengths it claims.  mk_cbor_append writes the same
** bytes after a buffer's.
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "term.h"
#include "cbor.h"

/* A term from its text (mk_read), for the tests' own literals. */
static mk_term *T (const char *text) {
  const char *err = NULL;
  mk_term *t = mk_read(text, strlen(text), NULL, &err);
  if (t == NULL) {
    fprintf(stderr, "bad test literal %s: %s\n", text, err);
    exit(2);
  }
  return t;
}

/* t encodes, and decodes back to a term equal to it. */
static int roundtrips (mk_term *t) {
  size_t len = 0;
  unsigned char *b = mk_cbor_encode(t, &len);
  const char *why = NULL;
  mk_term *u;
  int ok;
  if (b == NULL) return 0;
  u = mk_cbor_decode(b, len, &why);
  ok = u != NULL && mk_equal(t, u) && mk_term_size(u) == mk_term_size(t) &&
       u->depth == t->depth;
  if (!ok) fprintf(stderr, "  round trip failed: %s\n", why ? why : "not equal");
  mk_unref(u);
  free(b);
  return ok;
}

/* Decoding these bytes fails with this reason. */
static int refused (const unsigned char *b, size_t len, const char *reason) {
  const char *why = NULL;
  mk_term *t = mk_cbor_decode(b, len, &why);
  if (t != NULL) {
    mk_unref(t);
    fprintf(stderr, "  decoded, expected: %s\n", reason);
    return 0;
  }
  if (why == NULL || strcmp(why, reason) != 0) {
    fprintf(stderr, "  reason \"%s\", expected \"%s\"\n", why ? why : "(none)", reason);
    return 0;
  }
  return 1;
}

/* The version wrapper that starts every encoding: tag 0x6d6b0000, [1, */
#define WRAP  0xda, 0x6d, 0x6b, 0x00, 0x00, 0x82, 0x01

/* The bytes `len` long given after the wrapper decode to the term `text`. */
static int reads_as (const unsigned char *body, size_t len, const char *text) {
  unsigned char b[64] = { WRAP };
  const char *why = NULL;
  mk_term *want = T(text), *got;
  int ok;
  memcpy(b + 7, body, len);
  got = mk_cbor_decode(b, 7 + len, &why);
  ok = got != NULL && mk_equal(got, want);
  if (!ok) fprintf(stderr, "  %s: %s\n", text, got ? "another term" : why);
  mk_unref(got);
  mk_unref(want);
  return ok;
}

static void every_kind (void) {
  static const char *const terms[] = {
    "nil", "false", "true", "0", "1", "23", "24", "255", "256", "65536", "-1", "-24",
    "-25", "-256", "-257", "9223372036854775807", "-9223372036854775808",
    "1.5", "-0.25", "1e300", "-1e-300", "nan", "inf", "-inf", "\"\"", "\"hi\"",
    "\"\\x00\\xff\\xc3(\"", "[]", "[1, [2, [3]], []]", "f()", "f(1, \"a\")", "_", "#eof",
    "chat-line(\"bob\", \"hi\")", "a(b(c(_)), [#eof, _], nil, 2.5)",
  };
  size_t base = mk_term_live(), i;
  mk_term *t;
  for (i = 0; i < sizeof terms / sizeof terms[0]; i++) {
    t = T(terms[i]);
    CHECK(roundtrips(t));
    mk_unref(t);
  }
  t = mk_str("a\0b", 3);          /* NUL bytes in strings */
  CHECK(roundtrips(t));
  mk_unref(t);
  t = mk_float(-0.0);             /* an integer term: 0 */
  CHECK(roundtrips(t));
  mk_unref(t);
  CHECK(mk_term_live() == base);
}

/* The bytes docs/cluster.md shows, so that another program can rely on them. */
static void exact_bytes (void) {
  static const struct { const char *text; unsigned char b[24]; size_t len; } cases[] = {
    { "nil", { WRAP, 0xf6 }, 8 },
    { "true", { WRAP, 0xf5 }, 8 },
    { "-2", { WRAP, 0x21 }, 8 },
    { "1.5", { WRAP, 0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0 }, 16 },
    { "\"hi\"", { WRAP, 0x42, 'h', 'i' }, 10 },
    { "[1, 2]", { WRAP, 0x82, 0x01, 0x02 }, 10 },
    { "f(1)", { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x01, 0x82, 0x41, 'f', 0x01 }, 16 },
    { "_", { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x02, 0xf6 }, 13 },
    { "#eof", { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x03, 0xf6 }, 13 },
  };
  size_t base = mk_term_live(), i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mk_term *t = T(cases[i].text);
    size_t len = 0;
    unsigned char *b = mk_cbor_encode(t, &len);
    CHECK(b != NULL && len == cases[i].len && memcmp(b, cases[i].b, len) == 0);
    if (b == NULL || len != cases[i].len || memcmp(b, cases[i].b, len) != 0)
      fprintf(stderr, "  for %s\n", cases[i].text);
    free(b);
    mk_unref(t);
  }
  CHECK(mk_term_live() == base);
}

/* What other encoders may write: text strings, shorter floats, undefined,
** longer heads than needed. */
static void other_writers (void) {
  size_t base = mk_term_live();
  static const unsigned char text[] = { 0x63, 'a', 'b', 'c' };
  static const unsigned char half[] = { 0xf9, 0x3e, 0x00 };          /* 1.5 */
  static const unsigned char half1[] = { 0xf9, 0x3c, 0x00 };         /* 1.0: an integer */
  static const unsigned char single[] = { 0xfa, 0x3f, 0xc0, 0, 0 };  /* 1.5 */
  static const unsigned char halfnan[] = { 0xf9, 0x7e, 0x00 };
  static const unsigned char undef[] = { 0xf7 };
  static const unsigned char longint[] = { 0x1b, 0, 0, 0, 0, 0, 0, 0, 5 };
  static const unsigned char longarr[] = { 0x99, 0, 1, 0x07 };
  static const unsigned char textlabel[] = { 0xda, 0x6d, 0x6b, 0x00, 0x01, 0x82, 0x61, 'f', 0x63, 'x', 'y', 'z' };
  CHECK(reads_as(text, sizeof text, "\"abc\""));
  CHECK(reads_as(half, sizeof half, "1.5"));
  CHECK(reads_as(half1, sizeof half1, "1"));
  CHECK(reads_as(single, sizeof single, "1.5"));
  CHECK(reads_as(halfnan, sizeof halfnan, "nan"));
  CHECK(reads_as(undef, sizeof undef, "nil"));
  CHECK(reads_as(longint, sizeof longint, "5"));
  CHECK(reads_as(longarr, sizeof longarr, "[7]"));
  CHECK(reads_as(textlabel, sizeof textlabel, "f(\"xyz\")"));
  CHECK(mk_term_live() == base);
}

/* pair(t, t) over and over: written out as the tree, read back equal
** (and no longer shared). */
static void shared (void) {
  size_t base = mk_term_live(), len = 0;
  mk_rtype *pair = mk_rtype_get("pair", 4, 2, NULL);
  mk_term *t = T("\"leaf\""), *u;
  unsigned char *b;
  const char *why = NULL;
  int i;
  for (i = 0; i < 12; i++) t = mk_rec(pair, t, mk_ref(t));
  CHECK(t != NULL && mk_term_size(t) == 8191);
  b = mk_cbor_encode(t, &len);
  CHECK(b != NULL);
  /* 4096 leaves of 5 bytes, 4095 records of 11 */
  CHECK(len == 7 + 4096 * 5 + 4095 * 11);
  u = mk_cbor_decode(b, len, &why);
  CHECK(u != NULL && mk_equal(t, u) && mk_term_size(u) == 8191);
  CHECK(u != NULL && mk_items(u)[0] != mk_items(u)[1]);
  free(b);
  mk_unref(u);
  mk_unref(t);
  mk_rtype_unref(pair);
  CHECK(mk_term_live() == base);
}

/* The limits in force hold on the way in: a term one past them is
** refused, one at them read. */
static void limits (void) {
  size_t base = mk_term_live(), len = 0, i;
  mk_term *t = mk_nil();
  unsigned char *b, *deep;
  const char *why = NULL;
  mk_term *u;
  for (i = 0; i < 50; i++) {                   /* [[[...nil...]]], 50 deep */
    mk_term *s = mk_seq_new(1);
    mk_set(s, 0, t);
    t = mk_seal(s);
  }
  b = mk_cbor_encode(t, &len);
  CHECK(b != NULL && t->depth == 50);
  CHECK(mk_term_set_depth_limit(49) == 0);
  CHECK(refused(b, len, "a term nested deeper than the depth limit"));
  CHECK(mk_term_set_depth_limit(50) == 0);
  u = mk_cbor_decode(b, len, &why);
  CHECK(u != NULL && mk_equal(u, t));
  mk_unref(u);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  free(b);
  mk_unref(t);

  t = T("[1, 2, f(3, [4, 5]), _]");            /* 9 nodes */
  b = mk_cbor_encode(t, &len);
  CHECK(mk_term_set_size_limit(8) == 0);
  CHECK(refused(b, len, "a term of more nodes than the size limit"));
  CHECK(mk_term_set_size_limit(9) == 0);
  u = mk_cbor_decode(b, len, &why);
  CHECK(u != NULL && mk_equal(u, t));
  mk_unref(u);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
  free(b);
  mk_unref(t);

  /* a million nested arrays: refused at the depth limit, no recursion */
  deep = malloc(1000007);
  CHECK(deep != NULL);
  if (deep != NULL) {
    static const unsigned char wrap[] = { WRAP };
    memcpy(deep, wrap, 7);
    memset(deep + 7, 0x81, 1000000);
    CHECK(refused(deep, 1000007, "a term nested deeper than the depth limit"));
    free(deep);
  }
  CHECK(mk_term_live() == base);
}

/* Lengths in the input are not believed past the bytes that follow. */
static void hostile_lengths (void) {
  static const unsigned char arr[] = { WRAP, 0x9b, 0, 0, 0, 1, 0, 0, 0, 0, 0 };   /* 2^32 items */
  static const unsigned char arr2[] = { WRAP, 0x9a, 0xff, 0xff, 0xff, 0xff, 0 };
  static const unsigned char rec[] = { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x01, 0x9a, 0x10, 0, 0, 0, 0x40 };
  static const unsigned char str[] = { WRAP, 0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 'x' };
  static const unsigned char big[] = { WRAP, 0x9a, 0x00, 0x20, 0x00, 0x00 };
  size_t base = mk_term_live();
  CHECK(refused(arr, sizeof arr, "truncated CBOR"));
  CHECK(refused(arr2, sizeof arr2, "truncated CBOR"));
  CHECK(refused(rec, sizeof rec, "truncated CBOR"));
  CHECK(refused(str, sizeof str, "truncated CBOR"));
  /* 2^21 items, with the bytes there: past the size limit, refused before
  ** the slots are allocated */
  {
    size_t n = sizeof big + ((size_t)1 << 21);
    unsigned char *b = malloc(n);
    CHECK(b != NULL);
    if (b != NULL) {
      memcpy(b, big, sizeof big);
      memset(b + sizeof big, 0x00, n - sizeof big);
      CHECK(refused(b, n, "a term of more nodes than the size limit"));
      free(b);
    }
  }
  CHECK(mk_term_live() == base);
}

static void malformed (void) {
  static const struct { unsigned char b[16]; size_t len; const char *why; } cases[] = {
    { { 0 }, 0, "truncated CBOR" },
    { { 0xf6 }, 1, "not a market term (no version tag)" },
    { { 0xd8, 0x20, 0xf6 }, 3, "not a market term (no version tag)" },
    { { 0xda, 0x6d, 0x6b, 0x00, 0x00, 0xf6 }, 6, "a version tag around something else than [version, term]" },
    { { 0xda, 0x6d, 0x6b, 0x00, 0x00, 0x83, 0x01, 0xf6, 0xf6 }, 9, "a version tag around something else than [version, term]" },
    { { 0xda, 0x6d, 0x6b, 0x00, 0x00, 0x82, 0x20, 0xf6 }, 8, "a version that is not an unsigned integer" },
    { { 0xda, 0x6d, 0x6b, 0x00, 0x00, 0x82, 0x02, 0xf6 }, 8, "an unsupported version" },
    { { WRAP, 0xf6, 0xf6 }, 9, "trailing bytes after the term" },
    { { WRAP, 0xd8, 0x20, 0x60 }, 10, "an unknown tag" },
    { { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x04, 0xf6 }, 13, "an unknown tag" },
    { { WRAP, 0xa1, 0x01, 0x02 }, 10, "a map (no term is one)" },
    { { WRAP, 0x9f, 0xff }, 9, "an indefinite length (terms are written with definite ones)" },
    { { WRAP, 0x5f, 0x41, 'a', 0xff }, 11, "an indefinite length (terms are written with definite ones)" },
    { { WRAP, 0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0 }, 16, "an integer beyond 64 bits signed" },
    { { WRAP, 0x3b, 0x80, 0, 0, 0, 0, 0, 0, 0 }, 16, "an integer beyond 64 bits signed" },
    { { WRAP, 0xff }, 8, "malformed CBOR" },
    { { WRAP, 0x1c }, 8, "malformed CBOR" },
    { { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x01, 0x80 }, 13, "a record tag around something else than [label, field...]" },
    { { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x01, 0xf6 }, 13, "a record tag around something else than [label, field...]" },
    { { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x01, 0x82, 0x01, 0x01 }, 15, "a record whose label is not a string" },
    { { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x01, 0x81, 0x42, 'a', 0 }, 16, "a record label holding a NUL byte" },
    { { WRAP, 0xda, 0x6d, 0x6b, 0x00, 0x02, 0x01 }, 13, "a wildcard or EOF tag around something else than null" },
    { { WRAP, 0x82, 0x01 }, 9, "truncated CBOR" },
  };
  size_t base = mk_term_live(), i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK(refused(cases[i].b, cases[i].len, cases[i].why));
  }
  CHECK(mk_cbor_decode(NULL, 5, NULL) == NULL);    /* no reason asked for */
  CHECK(mk_term_live() == base);
}

/* Every proper prefix of an encoding is refused, the whole read. */
static void prefixes (void) {
  size_t base = mk_term_live(), len = 0, k;
  mk_term *t = T("m(\"a\", [1, -300, 2.5, _, #eof], n(), \"long enough string\", true)");
  unsigned char *b = mk_cbor_encode(t, &len);
  CHECK(b != NULL);
  for (k = 0; b != NULL && k < len; k++) {
    const char *why = NULL;
    mk_term *u = mk_cbor_decode(b, k, &why);
    CHECK(u == NULL && why != NULL);
    mk_unref(u);
  }
  CHECK(roundtrips(t));
  free(b);
  mk_unref(t);
  CHECK(mk_term_live() == base);
}

/* mk_cbor_append writes a term's encoding past the wrapper after what
** the buffer holds, growing it; a buffer may start empty. */
static void append (void) {
  size_t base = mk_term_live(), len = 0, elen = 0, cap = 4, i;
  mk_term *t = T("m(\"a\", [1, -300, 2.5, _, #eof], \"long enough string\")");
  mk_term *u = T("[nil, true]");
  unsigned char *e = mk_cbor_encode(t, &elen), *b = malloc(cap), *b0 = NULL;
  CHECK(e != NULL && b != NULL && elen > 7);
  memcpy(b, "env", 3);
  len = 3;
  CHECK(mk_cbor_append(t, &b, &len, &cap) == 0);
  CHECK(len == 3 + elen - 7 && cap >= len);
  CHECK(memcmp(b, "env", 3) == 0 && memcmp(b + 3, e + 7, elen - 7) == 0);
  CHECK(mk_cbor_append(u, &b, &len, &cap) == 0);      /* and again, after it */
  CHECK(len == 3 + elen - 7 + 3 && memcmp(b + len - 3, "\x82\xf6\xf5", 3) == 0);
  len = 0;
  cap = 0;
  CHECK(mk_cbor_append(u, &b0, &len, &cap) == 0);     /* from nothing */
  CHECK(b0 != NULL && len == 3 && memcmp(b0, "\x82\xf6\xf5", 3) == 0);
  for (i = 0; i < len; i++) CHECK(b0[i] == b[3 + elen - 7 + i]);
  free(b0);
  free(b);
  free(e);
  mk_unref(u);
  mk_unref(t);
  CHECK(mk_term_live() == base);
}

int main (void) {
  RUN(every_kind);
  RUN(exact_bytes);
  RUN(other_writers);
  RUN(shared);
  RUN(limits);
  RUN(hostile_lengths);
  RUN(malformed);
  RUN(prefixes);
  RUN(append);
  return CHECK_DONE();
}

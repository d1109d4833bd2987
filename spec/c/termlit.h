/*
** termlit.h: term literals for the C tests (static: include once per test).
*/
#ifndef MK_TERMLIT_H
#define MK_TERMLIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "term.h"

/*
** {======================================================
** A small reader for term literals, so that tests can say
**   P("f(1, [_, \"x\"])")
** Records are label(args) with the arity counted from the args.
** =======================================================
*/

typedef struct Rd { const char *s; } Rd;

static void rdfail (Rd *r, const char *why) {
  fprintf(stderr, "bad test literal (%s) at: %s\n", why, r->s);
  exit(2);
}

static void skipsp (Rd *r) {
  while (*r->s == ' ') r->s++;
}

static int identch (char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static int hexval (char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static mk_term *rdterm (Rd *r);

/* Items up to `close`, into a growable array; returns the count. */
static uint32_t rditems (Rd *r, char close, mk_term ***items) {
  uint32_t n = 0, cap = 4;
  *items = malloc(cap * sizeof(mk_term *));
  skipsp(r);
  if (*r->s == close) { r->s++; return 0; }
  for (;;) {
    if (n == cap) *items = realloc(*items, (cap *= 2) * sizeof(mk_term *));
    (*items)[n++] = rdterm(r);
    skipsp(r);
    if (*r->s == ',') { r->s++; continue; }
    if (*r->s == close) { r->s++; return n; }
    rdfail(r, "expected , or close");
  }
}

static mk_term *rdstring (Rd *r) {
  size_t n = 0, cap = 16;
  char *buf = malloc(cap);
  mk_term *t;
  r->s++;  /* opening quote */
  while (*r->s != '"') {
    char c = *r->s++;
    if (c == '\0') rdfail(r, "unterminated string");
    if (c == '\\') {
      c = *r->s++;
      switch (c) {
        case 'n': c = '\n'; break;
        case 't': c = '\t'; break;
        case 'r': c = '\r'; break;
        case '0': c = '\0'; break;
        case 'x': c = (char)(hexval(r->s[0]) * 16 + hexval(r->s[1])); r->s += 2; break;
        default: break;  /* \" and \\ */
      }
    }
    if (n == cap) buf = realloc(buf, cap *= 2);
    buf[n++] = c;
  }
  r->s++;
  t = mk_str(buf, n);
  free(buf);
  return t;
}

static mk_term *rdterm (Rd *r) {
  const char *start;
  skipsp(r);
  start = r->s;
  if (*r->s == '"') return rdstring(r);
  if (*r->s == '[') {
    mk_term **items, *t;
    uint32_t i, n;
    r->s++;
    n = rditems(r, ']', &items);
    t = mk_seq_new(n);
    for (i = 0; i < n; i++) mk_set(t, i, items[i]);
    free(items);
    if ((t = mk_seal(t)) == NULL) rdfail(r, "beyond the depth or the size limit");
    return t;
  }
  if (strncmp(r->s, "#eof", 4) == 0) { r->s += 4; return mk_eof(); }
  if ((*r->s >= '0' && *r->s <= '9') || *r->s == '-' || *r->s == '.') {
    char *end;
    double f = strtod(r->s, &end);
    const char *p;
    if (end == r->s) rdfail(r, "bad number");
    for (p = r->s; p < end; p++) {
      if (strchr(".eEnNiI", *p) != NULL) {  /* it reads as a float */
        r->s = end;
        return mk_float(f);
      }
    }
    r->s = end;
    return mk_int(strtoll(start, NULL, 10));
  }
  while (identch(*r->s)) r->s++;
  if (r->s == start) rdfail(r, "unexpected character");
  if (*r->s != '(') {
    size_t len = (size_t)(r->s - start);
    if (len == 1 && *start == '_') return mk_wild();
    if (len == 3 && strncmp(start, "nil", 3) == 0) return mk_nil();
    if (len == 4 && strncmp(start, "true", 4) == 0) return mk_bool(1);
    if (len == 5 && strncmp(start, "false", 5) == 0) return mk_bool(0);
    if (len == 3 && strncmp(start, "inf", 3) == 0) return mk_float(INFINITY);
    if (len == 3 && strncmp(start, "nan", 3) == 0) return mk_float(NAN);
    rdfail(r, "unknown word");
  }
  {
    size_t len = (size_t)(r->s - start);
    mk_term **items, *t;
    mk_rtype *rt;
    uint32_t i, n;
    r->s++;
    n = rditems(r, ')', &items);
    rt = mk_rtype_get(start, len, n, NULL);
    t = mk_rec_new(rt);
    mk_rtype_unref(rt);
    for (i = 0; i < n; i++) mk_set(t, i, items[i]);
    free(items);
    if ((t = mk_seal(t)) == NULL) rdfail(r, "beyond the depth or the size limit");
    return t;
  }
}

static mk_term *P (const char *s) {
  Rd r;
  mk_term *t;
  r.s = s;
  t = rdterm(&r);
  skipsp(&r);
  if (*r.s != '\0') rdfail(&r, "trailing text");
  return t;
}

/* }====================================================== */

#endif

/*
** json.c: terms written as JSON, and names in lines of text (json.h).
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "json.h"

void mk_jbuf_add(mk_jbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    char *np;
    while (cap < b->n + n + 1) cap *= 2;
    if ((np = realloc(b->p, cap)) == NULL) { b->oom = 1; return; }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

void mk_jbuf_adds(mk_jbuf *b, const char *s) { mk_jbuf_add(b, s, strlen(s)); }

static int is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

/* c as \xHH, for names and messages in text */
static void addhex(mk_jbuf *b, unsigned char c) {
  static const char hex[] = "0123456789abcdef";
  char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
  mk_jbuf_add(b, e, 4);
}

/* How many of the n bytes at u a line shows when it shows at most max:
** all of them, or max less the start of the UTF-8 character the limit
** falls in. */
static size_t shown_of(const unsigned char *u, size_t n, size_t max) {
  size_t shown = max;
  if (n <= max) return n;
  while (shown > max - 3 && (u[shown] & 0xc0) == 0x80) shown--;
  return shown;
}

/* What a cut name or message left out. */
static void addmore(mk_jbuf *b, size_t more) {
  char s[48];
  snprintf(s, sizeof s, " ... (%zu bytes more)", more);
  mk_jbuf_adds(b, s);
}

void mk_jbuf_addname(mk_jbuf *b, const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = strlen(s), shown = shown_of(u, n, MK_NAME_MAX), i, run = 0;
  for (i = 0; i < shown; i++) {
    if (!is_control(u[i])) continue;
    mk_jbuf_add(b, s + run, i - run);
    run = i + 1;
    if (u[i] == '\n') mk_jbuf_adds(b, "\\n");
    else if (u[i] == '\r') mk_jbuf_adds(b, "\\r");
    else if (u[i] == '\t') mk_jbuf_adds(b, "\\t");
    else addhex(b, u[i]);
  }
  mk_jbuf_add(b, s + run, shown - run);
  if (shown < n) addmore(b, n - shown);
}

char *mk_name_escaped(const char *s) {
  mk_jbuf b = {NULL, 0, 0, 0};
  const char *c;
  for (c = s; *c && !is_control((unsigned char)*c); c++) {}
  /* the common case: a scan */
  if (*c == '\0' && (size_t)(c - s) <= MK_NAME_MAX) return NULL;
  mk_jbuf_addname(&b, s);
  if (b.oom) { free(b.p); return NULL; }
  return b.p;
}

/* The length of the UTF-8 sequence at s (n bytes left), or 0 if it is
** not a valid one (overlong forms, surrogates, past U+10FFFF, cut short). */
static size_t utf8len(const unsigned char *s, size_t n) {
  size_t len, i;
  unsigned long c;
  if (s[0] < 0x80) return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf) len = 2, c = s[0] & 0x1f;
  else if (s[0] >= 0xe0 && s[0] <= 0xef) len = 3, c = s[0] & 0x0f;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4) len = 4, c = s[0] & 0x07;
  else return 0;
  if (len > n) return 0;
  for (i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    c = (c << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) ||
      (len == 4 && (c < 0x10000 || c > 0x10ffff)))
    return 0;
  return len;
}

/* How many bytes at s (n left) a message shows as they are: a printable
** ASCII byte, a tab, or a whole UTF-8 character other than the C1
** controls (U+0080 to U+009F, which some terminals obey as ESC [ and the
** like); 0 for anything else. */
static size_t shownlen(const unsigned char *s, size_t n) {
  size_t len;
  if (s[0] == '\t' || (s[0] >= 0x20 && s[0] < 0x7f)) return 1;
  if (s[0] < 0x80) return 0;
  len = utf8len(s, n);
  return len == 2 && s[0] == 0xc2 && s[1] < 0xa0 ? 0 : len;
}

void mk_jbuf_addtext(mk_jbuf *b, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    size_t run = i, len;
    while (run < n && (len = shownlen(u + run, n - run)) > 0) run += len;
    if (run > i) { mk_jbuf_add(b, s + i, run - i); i = run; continue; }
    if (u[i] == '\r' && i + 1 < n && u[i + 1] == '\n') i++;    /* CR LF: one break */
    if (u[i] == '\n') {
      mk_jbuf_add(b, "\n\t", 2);
    } else if (u[i] == '\r') {
      mk_jbuf_add(b, "\\r", 2);
    } else {
      addhex(b, u[i]);
    }
    i++;
  }
}

char *mk_text_escaped(const char *s, size_t n) {
  mk_jbuf b = {NULL, 0, 0, 0};
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, len, shown = shown_of(u, n, MK_TEXT_MAX);
  if (shown < n && u[shown - 1] == '\r' && u[shown] == '\n') shown--;   /* not inside a CR LF */
  while (i < shown && (len = shownlen(u + i, shown - i)) > 0) i += len;
  if (i == n) return NULL;               /* the common case: a scan */
  mk_jbuf_addtext(&b, s, shown);
  if (shown < n) addmore(&b, n - shown);
  if (b.oom) { free(b.p); return NULL; }
  return b.p;
}

int mk_json_str(mk_jbuf *b, const char *s, size_t n, int lax) {
  static const char hex[] = "0123456789abcdef";
  size_t i = 0;
  mk_jbuf_add(b, "\"", 1);
  while (i < n) {
    unsigned char c = (unsigned char)s[i];
    size_t run = i, len;
    while (run < n && (unsigned char)s[run] >= 0x20 && (unsigned char)s[run] < 0x7f &&
           s[run] != '"' && s[run] != '\\')
      run++;
    if (run > i) { mk_jbuf_add(b, s + i, run - i); i = run; continue; }
    if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; mk_jbuf_add(b, e, 2); i++; continue; }
    if (c == '\n') { mk_jbuf_add(b, "\\n", 2); i++; continue; }
    if (c == '\t') { mk_jbuf_add(b, "\\t", 2); i++; continue; }
    if (c == '\r') { mk_jbuf_add(b, "\\r", 2); i++; continue; }
    if (c < 0x20 || c == 0x7f) {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      mk_jbuf_add(b, e, 6);
      i++;
      continue;
    }
    if ((len = utf8len((const unsigned char *)s + i, n - i)) == 0) {
      if (!lax) return 0;
      mk_jbuf_add(b, "\\ufffd", 6);
      len = 1;
    } else {
      mk_jbuf_add(b, s + i, len);
    }
    i += len;
  }
  mk_jbuf_add(b, "\"", 1);
  return 1;
}

void mk_json_int(mk_jbuf *b, long long i) {
  char num[32];
  snprintf(num, sizeof num, "%lld", i);
  mk_jbuf_adds(b, num);
}

void mk_json_float(mk_jbuf *b, double f) {
  char num[40];
  if (isfinite(f)) snprintf(num, sizeof num, "%.17g", f);
  else snprintf(num, sizeof num, "{\"float\":\"%s\"}", isnan(f) ? "nan" : f > 0 ? "inf" : "-inf");
  mk_jbuf_adds(b, num);
}

int mk_json_term(mk_jbuf *b, const mk_term *t, size_t end) {
  static const char hex[] = "0123456789abcdef";
  uint32_t i;
  if (b->n > end || b->oom) return 0;
  switch (mk_kindof(t)) {
    case MK_NIL: mk_jbuf_adds(b, "null"); break;
    case MK_FALSE: mk_jbuf_adds(b, "false"); break;
    case MK_TRUE: mk_jbuf_adds(b, "true"); break;
    case MK_INT: mk_json_int(b, (long long)t->v.i); break;
    case MK_FLOAT: mk_json_float(b, t->v.f); break;
    case MK_STR: {
      size_t mark = b->n;
      if (end != SIZE_MAX && b->n + t->n > end) return 0;
      if (mk_json_str(b, mk_strdata(t), t->n, 0)) break;
      b->n = mark;                 /* not UTF-8: the bytes in hex */
      mk_jbuf_adds(b, "{\"bytes\":\"");
      for (i = 0; i < t->n && b->n <= end; i++) {
        unsigned char c = (unsigned char)mk_strdata(t)[i];
        char h[2] = {hex[c >> 4], hex[c & 15]};
        mk_jbuf_add(b, h, 2);
      }
      mk_jbuf_adds(b, "\"}");
      break;
    }
    case MK_WILD: mk_jbuf_adds(b, "{\"wildcard\":true}"); break;
    case MK_EOF: mk_jbuf_adds(b, "{\"eof\":true}"); break;
    case MK_REC: case MK_SEQ:
      if (t->kind == MK_REC) {
        mk_jbuf_adds(b, "{\"record\":");
        /* as a string: past the end, not written (a label may be long) */
        if (end != SIZE_MAX && b->n + t->v.rt->labellen > end) return 0;
        mk_json_str(b, t->v.rt->label, t->v.rt->labellen, 1);
        mk_jbuf_adds(b, ",\"fields\":");
      }
      mk_jbuf_add(b, "[", 1);
      for (i = 0; i < t->n; i++) {
        if (i > 0) mk_jbuf_add(b, ",", 1);
        if (!mk_json_term(b, mk_items(t)[i], end)) return 0;
      }
      mk_jbuf_add(b, "]", 1);
      if (t->kind == MK_REC) mk_jbuf_add(b, "}", 1);
      break;
  }
  return b->n <= end && !b->oom;
}

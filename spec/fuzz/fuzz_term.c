/*
** fuzz_term.c: libFuzzer target for terms (runtime/term.[ch]).
**
** The input is a program for a small stack machine that builds each term
** twice: with term.h, and as a plain tree (Ref) that a naive reference
** implementation below reads.  When the program ends, every term on the
** stack is checked against its tree (kind, values, depth, groundness and
** size at every node; repr and repr_max byte for byte), and every pair of
** terms against each other: equality both ways and against the reference,
** equal terms hashing equal, unifies both ways and against the reference,
** and the unifier against the reference's (an instance of both inputs, the
** same both ways, no deeper than the deeper input, no larger than the two
** together).  Then everything is released, and no term may be left
** (mk_term_live).
**
** The first byte sets the depth limit, low, so that short inputs reach it
** and go past it: building a term deeper than the limit must give NULL
** and release what it was given, as the reference predicts.  An operation
** sets the size limit, low or high, and one doubles a term many times over
** by sharing it (pair(t, t)), far past what the checks at the end can walk:
** each doubling is checked for its size as it is made, and building past
** the size limit must give NULL too.  Refs share their items as terms do
** (counted references), so that the reference of such a term stays small.
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "term.h"

#define CHECK(e) do { if (!(e)) { \
  fprintf(stderr, "fuzz_term: %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #e); \
  abort(); } } while (0)

/*
** {======================================================
** The reference: plain trees, read by plain recursion
** =======================================================
*/

typedef struct Ref Ref;
struct Ref {
  int kind;                 /* mk_kind */
  int64_t i;                /* MK_INT */
  double f;                 /* MK_FLOAT */
  char *s;                  /* MK_STR: owned bytes; MK_REC: owned label */
  size_t len;               /* their length */
  size_t n;                 /* items */
  Ref **items;              /* one counted reference each */
  unsigned depth;
  int ground;
  uint64_t nodes;           /* nodes in this tree: its size */
  unsigned refs;            /* Refs are immutable once made, and shared */
};

static Ref *ref_new (int kind) {
  Ref *r = calloc(1, sizeof *r);
  CHECK(r != NULL);
  r->kind = kind;
  r->ground = kind != MK_WILD;
  r->nodes = 1;
  r->refs = 1;
  return r;
}

static Ref *ref_share (Ref *r) {
  r->refs++;
  return r;
}

static void ref_free (Ref *r) {
  size_t k;
  if (r == NULL || --r->refs > 0) return;
  for (k = 0; k < r->n; k++) ref_free(r->items[k]);
  free(r->items);
  free(r->s);
  free(r);
}

static char *dupbytes (const char *s, size_t len) {
  char *d = malloc(len + 1);
  CHECK(d != NULL);
  if (len > 0) memcpy(d, s, len);
  d[len] = '\0';
  return d;
}

/* A compound of the given items (taken); depth and groundness from them. */
static Ref *ref_compound (int kind, const char *label, size_t labellen, size_t n,
                          Ref **items) {
  Ref *r = ref_new(kind);
  size_t k;
  if (kind == MK_REC) { r->s = dupbytes(label, labellen); r->len = labellen; }
  r->n = n;
  r->items = calloc(n ? n : 1, sizeof *r->items);
  CHECK(r->items != NULL);
  r->depth = 1;
  for (k = 0; k < n; k++) {
    r->items[k] = items[k];
    if (items[k]->depth + 1 > r->depth) r->depth = items[k]->depth + 1;
    r->ground = r->ground && items[k]->ground;
    r->nodes += items[k]->nodes;
  }
  return r;
}

/* As the documentation says numbers are: an integral float in the int64
** range is that integer (-0.0 is 0); every NaN is one NaN. */
static Ref *ref_number (double f) {
  Ref *r;
  if (isfinite(f) && floor(f) == f && f >= -0x1p63 && f < 0x1p63) {
    r = ref_new(MK_INT);
    r->i = (int64_t)f;
  } else {
    r = ref_new(MK_FLOAT);
    r->f = f;
  }
  return r;
}

static int ref_equal (const Ref *a, const Ref *b) {
  size_t k;
  if (a->kind != b->kind) return 0;
  switch (a->kind) {
    case MK_INT: return a->i == b->i;
    case MK_FLOAT: return a->f == b->f || (isnan(a->f) && isnan(b->f));
    case MK_STR: return a->len == b->len && memcmp(a->s, b->s, a->len) == 0;
    case MK_REC:
      if (a->len != b->len || memcmp(a->s, b->s, a->len) != 0) return 0;
      /* FALLTHROUGH */
    case MK_SEQ:
      if (a->n != b->n) return 0;
      for (k = 0; k < a->n; k++) if (!ref_equal(a->items[k], b->items[k])) return 0;
      return 1;
    default: return 1;
  }
}

static int ref_unifies (const Ref *a, const Ref *b) {
  size_t k;
  if (a->kind == MK_WILD || b->kind == MK_WILD) return 1;
  if (a->kind != b->kind) return 0;
  if (a->kind == MK_REC && (a->len != b->len || memcmp(a->s, b->s, a->len) != 0)) return 0;
  if (a->kind != MK_REC && a->kind != MK_SEQ) return ref_equal(a, b);
  if (a->n != b->n) return 0;
  for (k = 0; k < a->n; k++) if (!ref_unifies(a->items[k], b->items[k])) return 0;
  return 1;
}

/* The unifier of two trees that unify: each wildcard takes the other
** side's subtree. */
static Ref *ref_merge (Ref *a, Ref *b) {
  Ref **items, *r;
  size_t k;
  if (a->kind == MK_WILD) return ref_share(b);
  if (b->kind == MK_WILD || (a->kind != MK_REC && a->kind != MK_SEQ)) return ref_share(a);
  items = calloc(a->n ? a->n : 1, sizeof *items);
  CHECK(items != NULL);
  for (k = 0; k < a->n; k++) items[k] = ref_merge(a->items[k], b->items[k]);
  r = ref_compound(a->kind, a->s, a->len, a->n, items);
  free(items);
  return r;
}

/* The text, as docs/terms.md and term.h describe it. */
typedef struct Text { char *p; size_t n, cap; } Text;

static void put (Text *t, const char *s, size_t len) {
  if (t->n + len + 1 > t->cap) {
    t->cap = (t->n + len + 1) * 2;
    t->p = realloc(t->p, t->cap);
    CHECK(t->p != NULL);
  }
  memcpy(t->p + t->n, s, len);
  t->n += len;
  t->p[t->n] = '\0';
}

static void puts_ (Text *t, const char *s) { put(t, s, strlen(s)); }

/* A string as mk_repr quotes it. */
static void ref_quoted (Text *t, const char *s, size_t len) {
  char num[8];
  size_t k;
  puts_(t, "\"");
  for (k = 0; k < len; k++) {
    unsigned char c = (unsigned char)s[k];
    if (c == '"') puts_(t, "\\\"");
    else if (c == '\\') puts_(t, "\\\\");
    else if (c == '\n') puts_(t, "\\n");
    else if (c == '\t') puts_(t, "\\t");
    else if (c == '\r') puts_(t, "\\r");
    else if (c >= 0x20 && c < 0x7f) put(t, (const char *)&c, 1);
    else { snprintf(num, sizeof num, "\\x%02x", c); puts_(t, num); }
  }
  puts_(t, "\"");
}

/* A label mk_repr writes bare: printable ASCII, no blank, none of ()[],". */
static int ref_bare (const char *s, size_t len) {
  size_t k;
  for (k = 0; k < len; k++)
    if ((unsigned char)s[k] <= ' ' || (unsigned char)s[k] >= 0x7f || strchr("()[],\"", s[k]))
      return 0;
  return len > 0;
}

static void ref_text (Text *t, const Ref *r) {
  char num[64];
  size_t k;
  switch (r->kind) {
    case MK_NIL: puts_(t, "nil"); break;
    case MK_FALSE: puts_(t, "false"); break;
    case MK_TRUE: puts_(t, "true"); break;
    case MK_WILD: puts_(t, "_"); break;
    case MK_EOF: puts_(t, "#eof"); break;
    case MK_INT:
      snprintf(num, sizeof num, "%lld", (long long)r->i);
      puts_(t, num);
      break;
    case MK_FLOAT:
      if (isnan(r->f)) puts_(t, "nan");
      else if (isinf(r->f)) puts_(t, r->f > 0 ? "inf" : "-inf");
      else {
        snprintf(num, sizeof num, "%.17g", r->f);
        puts_(t, num);
        if (!strpbrk(num, ".eE")) puts_(t, ".0");   /* reads back as a float */
      }
      break;
    case MK_STR:
      ref_quoted(t, r->s, r->len);
      break;
    default:
      if (r->kind == MK_REC) {
        if (ref_bare(r->s, r->len)) put(t, r->s, r->len);
        else ref_quoted(t, r->s, r->len);
        puts_(t, "(");
      }
      else puts_(t, "[");
      for (k = 0; k < r->n; k++) {
        if (k > 0) puts_(t, ", ");
        ref_text(t, r->items[k]);
      }
      puts_(t, r->kind == MK_REC ? ")" : "]");
  }
}

/* t is the term r describes, with the right depth, groundness and size at
** every node. */
static int same (const mk_term *t, const Ref *r) {
  size_t k;
  if (t == NULL || (int)t->kind != r->kind || t->depth != r->depth ||
      t->ground != r->ground || mk_term_size(t) != r->nodes)
    return 0;
  switch (r->kind) {
    case MK_INT: return t->v.i == r->i;
    case MK_FLOAT: return isnan(r->f) ? isnan(t->v.f) : t->v.f == r->f;
    case MK_STR: return t->n == r->len && memcmp(mk_strdata(t), r->s, r->len) == 0;
    case MK_REC:
      if (t->v.rt->labellen != r->len || memcmp(t->v.rt->label, r->s, r->len) != 0 ||
          t->v.rt->arity != r->n)
        return 0;
      /* FALLTHROUGH */
    case MK_SEQ:
      if (t->n != r->n) return 0;
      for (k = 0; k < r->n; k++) if (!same(mk_items(t)[k], r->items[k])) return 0;
      return 1;
    default: return 1;
  }
}

/* }====================================================== */


/*
** {======================================================
** The machine
** =======================================================
*/

#define MAXSTACK   24
#define MAXNODES   3000     /* reference nodes on the stack, in all */
#define MAXLIMIT   48       /* the depth limits an input may set: 1..MAXLIMIT */
#define MAXWRAP    (MAXLIMIT + 4)
#define MAXDOUBLE  64       /* doublings in one go: past any size limit */
#define MAXPAIRS   10       /* the pairs checked: of the top MAXPAIRS terms */

typedef struct In { const uint8_t *p; size_t n; } In;

static unsigned byte (In *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}

static uint64_t word (In *in) {
  uint64_t w = 0;
  int k;
  for (k = 0; k < 8; k++) w = w << 8 | byte(in);
  return w;
}

static const struct { const char *s; size_t len; } labels[] = {
  { "", 0 }, { "a", 1 }, { "b", 1 }, { "cons", 4 }, { "x\x01\"y", 4 }, { "a\0b", 3 },
};
#define NLABELS  (sizeof labels / sizeof labels[0])

typedef struct M {
  mk_term *t[MAXSTACK];
  Ref *r[MAXSTACK];
  int sp;
  uint64_t nodes;
} M;

static void push (M *m, mk_term *t, Ref *r) {
  CHECK(t != NULL && same(t, r));
  m->t[m->sp] = t;
  m->r[m->sp] = r;
  m->sp++;
  m->nodes += r->nodes;
}

static void drop (M *m) {
  m->sp--;
  m->nodes -= m->r[m->sp]->nodes;
  mk_unref(m->t[m->sp]);
  ref_free(m->r[m->sp]);
}

static int room (M *m, uint64_t nodes) {
  return m->sp < MAXSTACK && m->nodes + nodes <= MAXNODES;
}

static void atom (M *m, In *in, unsigned op) {
  mk_term *t;
  Ref *r;
  switch (op) {
    case 0: t = mk_nil(); r = ref_new(MK_NIL); break;
    case 1: {
      int b = byte(in) & 1;
      t = mk_bool(b);
      r = ref_new(b ? MK_TRUE : MK_FALSE);
      break;
    }
    case 2: case 3: {         /* small, or any */
      int64_t i = op == 2 ? (int8_t)byte(in) : (int64_t)word(in);
      t = mk_int(i);
      r = ref_new(MK_INT);
      r->i = i;
      break;
    }
    case 4: {                 /* any bits: NaNs, infinities, -0.0, huge */
      uint64_t w = word(in);
      double f;
      memcpy(&f, &w, sizeof f);
      t = mk_float(f);
      r = ref_number(f);
      break;
    }
    case 5: {                 /* small: integral or a quarter off */
      double f = ((int8_t)byte(in)) / 4.0;
      t = mk_float(f);
      r = ref_number(f);
      break;
    }
    case 6: {
      char buf[16];
      size_t len = byte(in) % sizeof buf, k;
      for (k = 0; k < len; k++) buf[k] = (char)byte(in);
      t = mk_str(buf, len);
      r = ref_new(MK_STR);
      r->s = dupbytes(buf, len);
      r->len = len;
      break;
    }
    case 7: t = mk_wild(); r = ref_new(MK_WILD); break;
    default: t = mk_eof(); r = ref_new(MK_EOF); break;
  }
  if (!room(m, 1)) { mk_unref(t); ref_free(r); return; }
  push(m, t, r);
}

/* Is r past the depth or the size limit?  Then building it gives NULL. */
static int past (const Ref *r) {
  return r->depth > mk_term_depth_limit() || r->nodes > mk_term_size_limit();
}

/* A record or sequence of the top n terms.  Past a limit, mk_seal (or
** mk_rec) gives NULL: the items were released with it. */
static void compound (M *m, In *in, int kind) {
  unsigned how = byte(in);
  size_t n = (how >> 3) % 5, k;
  const char *label = "";
  size_t labellen = 0;
  mk_rtype *rt = NULL;
  mk_term *t;
  Ref *r;
  if (!room(m, 1)) return;
  if (n > (size_t)m->sp) n = (size_t)m->sp;
  if (kind == MK_REC) {
    label = labels[how % NLABELS].s;
    labellen = labels[how % NLABELS].len;
    rt = mk_rtype_get(label, labellen, (uint32_t)n, NULL);
    if (memchr(label, '\0', labellen) != NULL) {   /* refused, not cut short */
      CHECK(rt == NULL);
      return;
    }
    CHECK(rt != NULL && rt->arity == n);
  }
  if (kind == MK_REC && n == 2 && (how & 4)) {
    /* mk_rec steals its fields and seals */
    m->sp -= 2;
    t = mk_rec(rt, m->t[m->sp], m->t[m->sp + 1]);
  } else {
    t = kind == MK_REC ? mk_rec_new(rt) : mk_seq_new((uint32_t)n);
    CHECK(t != NULL && t->n == n);
    m->sp -= (int)n;
    for (k = 0; k < n; k++) {
      if (how & 2) mk_set(t, (uint32_t)k, mk_int(99));   /* replaced (released) next */
      mk_set(t, (uint32_t)k, m->t[m->sp + (int)k]);
    }
    if (how & 1) mk_set(t, (uint32_t)n, mk_cstr("out of range"));   /* stolen all the same */
    t = mk_seal(t);
  }
  mk_rtype_unref(rt);
  r = ref_compound(kind, label, labellen, n, &m->r[m->sp]);
  for (k = 0; k < n; k++) m->nodes -= r->items[k]->nodes;
  if (past(r)) {
    CHECK(t == NULL);
    ref_free(r);
    return;
  }
  push(m, t, r);
}

/* A term built anew from the reference (equal to one on the stack, but
** no pointer shared with it, nor within it), or NULL past a limit. */
static mk_term *build (const Ref *r) {
  mk_term *t = NULL;
  size_t k;
  switch (r->kind) {
    case MK_NIL: return mk_nil();
    case MK_FALSE: return mk_bool(0);
    case MK_TRUE: return mk_bool(1);
    case MK_WILD: return mk_wild();
    case MK_EOF: return mk_eof();
    case MK_INT: return mk_int(r->i);
    case MK_FLOAT: return mk_float(r->f);
    case MK_STR: return mk_str(r->s, r->len);
    case MK_REC: {
      mk_rtype *rt = mk_rtype_get(r->s, r->len, (uint32_t)r->n, NULL);
      CHECK(rt != NULL);
      t = mk_rec_new(rt);
      mk_rtype_unref(rt);
      break;
    }
    default: t = mk_seq_new((uint32_t)r->n);
  }
  CHECK(t != NULL);
  for (k = 0; k < r->n; k++) {
    mk_term *it = build(r->items[k]);
    if (it == NULL) { mk_unref(t); return NULL; }
    mk_set(t, (uint32_t)k, it);
  }
  return mk_seal(t);
}

/* Wrap the top term k times, in "w"(t) or [t], as far as the limits let. */
static void wrap (M *m, unsigned how, unsigned k) {
  mk_rtype *w = mk_rtype_get("w", 1, 1, NULL);
  CHECK(w != NULL);
  while (m->sp > 0 && k-- > 0 && room(m, 1)) {
    int rec = how & 1;
    mk_term *t = rec ? mk_rec(w, m->t[m->sp - 1]) : mk_seq_new(1);
    Ref *r;
    if (!rec) {
      mk_set(t, 0, m->t[m->sp - 1]);
      t = mk_seal(t);
    }
    how = (how >> 1) | ((how & 1) << 7);     /* the next wrap's kind */
    m->sp--;
    r = ref_compound(rec ? MK_REC : MK_SEQ, "w", 1, 1, &m->r[m->sp]);
    m->nodes -= r->items[0]->nodes;
    if (past(r)) {
      CHECK(t == NULL);
      ref_free(r);
      break;
    }
    push(m, t, r);
  }
  mk_rtype_unref(w);
}

/*
** Double the top term k times over: "d"(t, t) or [t, t], sharing t, as far
** as the limits let it.  The size doubles with each, far past what the
** checks at the end can walk: each is checked here, as it is made, against
** its reference (made the same way, sharing its items), and the last goes
** on the stack only when it is small enough for those checks.
*/
static void doubling (M *m, unsigned how, unsigned k) {
  mk_rtype *d = mk_rtype_get("d", 1, 2, NULL);
  mk_term *t;
  Ref *r;
  CHECK(d != NULL);
  if (m->sp == 0) { mk_rtype_unref(d); return; }
  m->sp--;
  t = m->t[m->sp];
  r = m->r[m->sp];
  m->nodes -= r->nodes;
  while (k-- > 0) {
    int rec = how & 1;
    Ref *items[2];
    mk_term *u;
    Ref *ru;
    how = (how >> 1) | ((how & 1) << 7);     /* the next one's kind */
    if (rec) u = mk_rec(d, t, mk_ref(t));
    else {
      u = mk_seq_new(2);
      mk_set(u, 0, t);
      mk_set(u, 1, mk_ref(t));
      u = mk_seal(u);
    }
    items[0] = r;
    items[1] = ref_share(r);
    ru = ref_compound(rec ? MK_REC : MK_SEQ, "d", 1, 2, items);
    t = u;
    r = ru;
    if (past(r)) {
      CHECK(t == NULL);
      break;
    }
    CHECK(t != NULL && t->depth == r->depth && t->ground == r->ground &&
          mk_term_size(t) == r->nodes && mk_term_size(mk_items(t)[1]) == r->items[1]->nodes);
  }
  if (t != NULL && room(m, r->nodes)) push(m, t, r);
  else {
    mk_unref(t);
    ref_free(r);
  }
  mk_rtype_unref(d);
}

/* The size limits an input may set: small ones, which the terms on the
** stack reach, and every power of 2 up to MK_TERM_SIZE_MAX, which only
** doubling reaches. */
static size_t sizelimit (unsigned b) {
  if (b & 1) return 1 + (b >> 1) * 7;
  return (size_t)1 << ((b >> 1) % 25);     /* 2^24: MK_TERM_SIZE_MAX */
}

static void run (M *m, In *in) {
  while (in->n > 0) {
    unsigned op = byte(in) % 16, k;
    switch (op) {
      case 9: compound(m, in, MK_REC); break;
      case 10: compound(m, in, MK_SEQ); break;
      case 11:                /* the same term again, shared */
        k = byte(in);
        if (m->sp > 0) {
          int at = m->sp - 1 - (int)(k % (unsigned)m->sp);
          if (room(m, m->r[at]->nodes)) push(m, mk_ref(m->t[at]), ref_share(m->r[at]));
        }
        break;
      case 12:                /* an equal term, built apart */
        k = byte(in);
        if (m->sp > 0) {
          int at = m->sp - 1 - (int)(k % (unsigned)m->sp);
          if (room(m, m->r[at]->nodes)) {
            mk_term *t = build(m->r[at]);
            if (past(m->r[at])) CHECK(t == NULL);
            else push(m, t, ref_share(m->r[at]));
          }
        }
        break;
      case 13: {              /* wrap, or double */
        unsigned how = byte(in);
        k = byte(in);
        if (k < 0x80) wrap(m, how, k % MAXWRAP);
        else doubling(m, how, k % MAXDOUBLE);
        break;
      }
      case 14: {              /* a new limit; terms already made stay valid */
        size_t limit;
        k = byte(in);
        if (k < 0x80) {
          limit = 1 + k % MAXLIMIT;
          CHECK(mk_term_set_depth_limit(0) == -1 && mk_term_set_depth_limit(MK_TERM_DEPTH_MAX + 1) == -1);
          CHECK(mk_term_set_depth_limit(limit) == 0 && mk_term_depth_limit() == limit);
        } else {
          limit = sizelimit(byte(in));
          CHECK(mk_term_set_size_limit(0) == -1 && mk_term_set_size_limit(MK_TERM_SIZE_MAX + 1) == -1);
          CHECK(mk_term_set_size_limit(limit) == 0 && mk_term_size_limit() == limit);
        }
        break;
      }
      case 15:
        k = byte(in);
        if (m->sp > 0 && (k & 1)) drop(m);
        else if (m->sp > 1) {  /* swap the top two */
          mk_term *t = m->t[m->sp - 1];
          Ref *r = m->r[m->sp - 1];
          m->t[m->sp - 1] = m->t[m->sp - 2];
          m->r[m->sp - 1] = m->r[m->sp - 2];
          m->t[m->sp - 2] = t;
          m->r[m->sp - 2] = r;
        }
        break;
      default: atom(m, in, op); break;
    }
  }
}

/* }====================================================== */


/*
** {======================================================
** The checks
** =======================================================
*/

static void check_text (const mk_term *t, const Ref *r, unsigned extra) {
  Text want = { NULL, 0, 0 };
  size_t len, cut[7], k;
  char *s = mk_repr(t, &len);
  ref_text(&want, r);
  CHECK(s != NULL && len == want.n && memcmp(s, want.p, len) == 0 && strlen(s) == len);
  cut[0] = 0; cut[1] = 1; cut[2] = len / 2; cut[3] = len ? len - 1 : 0;
  cut[4] = len; cut[5] = len + 1; cut[6] = extra;
  for (k = 0; k < sizeof cut / sizeof cut[0]; k++) {
    size_t got;
    char *c = mk_repr_max(t, cut[k], &got);
    CHECK(c != NULL && strlen(c) == got);
    if (len <= cut[k]) CHECK(got == len && memcmp(c, s, len) == 0);
    else CHECK(got == cut[k] + 3 && memcmp(c, s, cut[k]) == 0 && memcmp(c + cut[k], "...", 3) == 0);
    free(c);
  }
  free(s);
  free(want.p);
}

/* m is an instance of a: a with (some of) its wildcards filled in. */
static int instance (const Ref *m, const Ref *a) {
  size_t k;
  if (a->kind == MK_WILD) return 1;
  if (a->kind != MK_REC && a->kind != MK_SEQ) return ref_equal(m, a);
  if (m->kind != a->kind || m->n != a->n || m->len != a->len ||
      (a->kind == MK_REC && memcmp(m->s, a->s, a->len) != 0))
    return 0;
  for (k = 0; k < a->n; k++) if (!instance(m->items[k], a->items[k])) return 0;
  return 1;
}

static void check_pair (mk_term *a, Ref *ra, mk_term *b, Ref *rb) {
  int eq = mk_equal(a, b), u = mk_unifies(a, b);
  mk_term *m1, *m2;
  CHECK(eq == ref_equal(ra, rb) && eq == mk_equal(b, a));
  if (eq) CHECK(mk_hash(a) == mk_hash(b));
  CHECK(u == ref_unifies(ra, rb) && u == mk_unifies(b, a));
  m1 = mk_unify(a, b);
  m2 = mk_unify(b, a);
  CHECK((m1 != NULL) == u && (m2 != NULL) == u);
  if (u) {
    Ref *rm = ref_merge(ra, rb);
    CHECK(instance(rm, ra) && instance(rm, rb));
    CHECK(same(m1, rm) && same(m2, rm));
    CHECK(mk_equal(m1, m2) && mk_hash(m1) == mk_hash(m2));
    CHECK(mk_unifies(m1, a) && mk_unifies(m1, b));
    CHECK(m1->depth <= (a->depth > b->depth ? a->depth : b->depth));
    CHECK(mk_term_size(m1) <= mk_term_size(a) + mk_term_size(b) - 1);
    if (a->ground) CHECK(mk_equal(m1, a));
    ref_free(rm);
  }
  mk_unref(m1);
  mk_unref(m2);
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  size_t base = mk_term_live();
  M m;
  In in;
  unsigned extra;
  int i, j;
  memset(&m, 0, sizeof m);
  in.p = data;
  in.n = size;
  extra = byte(&in);
  CHECK(mk_term_set_depth_limit(1 + byte(&in) % MAXLIMIT) == 0);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
  run(&m, &in);
  for (i = 0; i < m.sp; i++) {
    mk_term *t = m.t[i];
    mk_term *u = mk_unify(t, t);
    CHECK(same(t, m.r[i]) && mk_equal(t, t) && u == t);   /* unify(a, a) is a */
    mk_unref(u);
    check_text(t, m.r[i], extra);
  }
  for (i = m.sp > MAXPAIRS ? m.sp - MAXPAIRS : 0; i < m.sp; i++)
    for (j = m.sp > MAXPAIRS ? m.sp - MAXPAIRS : 0; j < m.sp; j++)
      check_pair(m.t[i], m.r[i], m.t[j], m.r[j]);
  while (m.sp > 0) drop(&m);
  CHECK(m.nodes == 0);
  CHECK(mk_term_live() == base);
  CHECK(mk_term_set_depth_limit(MK_TERM_DEPTH_DEFAULT) == 0);
  CHECK(mk_term_set_size_limit(MK_TERM_SIZE_DEFAULT) == 0);
  return 0;
}

/* }====================================================== */

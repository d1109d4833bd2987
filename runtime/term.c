/*
** term.c: immutable reference-counted terms and interned record types.
** See term.h for the ownership rules.
*/

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "term.h"


/*
** {======================================================
** Hashing: murmur3-style rounds and finaliser.  Every stored hash is
** finalised, so callers (the intern table, the routing index) may use
** the low bits directly as a table index.
** =======================================================
*/

#define HSEED   0x9747b28cu

static uint32_t rotl (uint32_t x, int r) {
  return (x << r) | (x >> (32 - r));
}

/* one murmur3 mixing round of the 32-bit word k into h */
static uint32_t hmix (uint32_t h, uint32_t k) {
  k *= 0xcc9e2d51u;
  k = rotl(k, 15);
  k *= 0x1b873593u;
  h ^= k;
  h = rotl(h, 13);
  return h * 5 + 0xe6546b64u;
}

/* Never 0: a term's hash of 0 means "not computed yet" (mk_hash). */
static uint32_t hfinal (uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h != 0 ? h : 1;
}

static uint32_t hmix64 (uint32_t h, uint64_t k) {
  return hmix(hmix(h, (uint32_t)k), (uint32_t)(k >> 32));
}

static uint32_t hfull (uint32_t h, const char *s, size_t len) {
  size_t i;
  uint32_t k = 0;
  for (i = 0; i + 4 <= len; i += 4) {
    uint32_t w;
    memcpy(&w, s + i, 4);  /* unaligned-safe load */
    h = hmix(h, w);
  }
  switch (len - i) {  /* tail, as murmur3 does it */
    case 3: k ^= (uint32_t)(unsigned char)s[i + 2] << 16;  /* FALLTHROUGH */
    case 2: k ^= (uint32_t)(unsigned char)s[i + 1] << 8;   /* FALLTHROUGH */
    case 1: k ^= (uint32_t)(unsigned char)s[i];
            k *= 0xcc9e2d51u; k = rotl(k, 15); k *= 0x1b873593u;
            h ^= k;
  }
  return h ^ (uint32_t)len;
}

/*
** A string's hash, computed the first time it is asked for (mk_hash), and
** then kept.  Most strings are never hashed: a payload travels under a
** wildcard of the topics it is routed by, and a server echoing 4 KiB
** messages spent 517 instructions of each round trip's 11,600 hashing it
** when it was made (issue 10).  One that is hashed, as the key of a
** routing index or a map, costs no more than HSAMPLED bytes' worth:
** strings longer than that are hashed over
** their first and last 64 bytes and 16 words spread between.  Equal
** strings still hash equal; strings differing only elsewhere collide,
** which costs the routing index one more comparison, never a wrong match
** (and payloads are seldom keys in it: topics hold wildcards there).
*/
#define HSAMPLED 256

static uint32_t hbytes (uint32_t h, const char *s, size_t len) {
  size_t stride, j;
  if (len <= HSAMPLED) return hfull(h, s, len);
  h = hfull(h, s, 64);
  h = hfull(h, s + len - 64, 64);
  stride = (len - 128 - 4) / 16;
  for (j = 0; j < 16; j++) {
    uint32_t w;
    memcpy(&w, s + 64 + j * stride, 4);
    h = hmix(h, w);
  }
  return h ^ (uint32_t)len;
}

/* }====================================================== */


/*
** {======================================================
** Singletons.  They are never allocated or freed; their hashes are
** arbitrary fixed constants (nothing else can be equal to them, so any
** distinct values will do).
** =======================================================
*/

#define SINGLETON(k,g,h)  { MK_IMMORTAL, (k), (g), 0, (h), 0, { 0 } }

static mk_term nil_obj   = SINGLETON(MK_NIL,   1, 0x1b3e6c2du);
static mk_term false_obj = SINGLETON(MK_FALSE, 1, 0x5f0a93e1u);
static mk_term true_obj  = SINGLETON(MK_TRUE,  1, 0x8c47d15bu);
static mk_term wild_obj  = SINGLETON(MK_WILD,  0, 0xd2f86a37u);
static mk_term eof_obj   = SINGLETON(MK_EOF,   1, 0x36a5c0f9u);
/* What a NULL item (a builder that failed) is stored as: deeper than any
** limit, so that sealing the compound fails as the item did, with no test
** of its own, where storing nil would pass a wrong term on. */
static mk_term failed_obj = { MK_IMMORTAL, MK_NIL, 1, UINT16_MAX, 0x0e4d93a1u, 0, { 0 } };

mk_term *mk_nil (void) { return &nil_obj; }
mk_term *mk_bool (int b) { return b ? &true_obj : &false_obj; }
mk_term *mk_wild (void) { return &wild_obj; }
mk_term *mk_eof (void) { return &eof_obj; }

/* }====================================================== */


/*
** {======================================================
** Allocation and reference counting
** =======================================================
*/

/* The depth fits where the compiler left padding: a term stays 24 bytes. */
_Static_assert(offsetof(mk_term, hash) == 8 && offsetof(mk_term, v) == 16,
               "struct mk_term: depth must fit the padding after ground");
_Static_assert(MK_TERM_DEPTH_MAX < UINT16_MAX, "depth is a uint16_t");

static size_t live_terms = 0;

size_t mk_term_live (void) {
  return live_terms;
}

/* The bytes of a term: the header and its payload (for a compound, its
** items and its size); what newterm asks of the small-block cache
** (pool.h) and mk_unref gives back to it.  Terms come from there because
** messages are made and freed at a high rate. */
static size_t termsize (mk_kind kind, uint32_t n) {
  switch (kind) {
    case MK_STR: return sizeof(mk_term) + (size_t)n + 1;
    case MK_REC: case MK_SEQ:
      return sizeof(mk_term) + (size_t)n * sizeof(mk_term *) + sizeof(uint32_t);
    default: return sizeof(mk_term);
  }
}

/* Where a compound keeps its size: after its items (term.h, "Size"). */
#define sizeslot(t)  ((uint32_t *)(mk_items(t) + (t)->n))

static mk_term *newterm (mk_kind kind, uint32_t n) {
  mk_term *t = (mk_term *)mk_pool_alloc(termsize(kind, n));
  if (t == NULL) return NULL;
  t->refs = 1;
  t->kind = (uint8_t)kind;
  t->ground = 1;
  t->depth = 0;
  t->hash = 0;
  t->n = n;
  t->v.i = 0;
  live_terms++;
  return t;
}

static int iscompound (const mk_term *t) {
  return t->kind == MK_REC || t->kind == MK_SEQ;
}

mk_term *mk_ref (mk_term *t) {
  if (t != NULL && t->refs != MK_IMMORTAL) t->refs++;
  return t;
}

/* Drop one reference; true when t has just died. */
static int dies (mk_term *t) {
  return t != NULL && t->refs != MK_IMMORTAL && --t->refs == 0;
}

/*
** A dead term waiting to have its items released is chained through its
** own value slot, so that freeing a deep term (a long cons list, say)
** needs neither recursion nor an auxiliary stack.  Its record type is
** released first, since that slot is reused.
*/
static void setnext (mk_term *t, mk_term *next) {
  if (t->kind == MK_REC) mk_rtype_unref(t->v.rt);
  memcpy(&t->v, &next, sizeof(next));
}

static mk_term *getnext (const mk_term *t) {
  mk_term *next;
  memcpy(&next, &t->v, sizeof(next));
  return next;
}

void mk_unref (mk_term *t) {
  mk_term *pending;
  if (!dies(t)) return;
  setnext(t, NULL);
  pending = t;
  while (pending != NULL) {
    t = pending;
    pending = getnext(t);
    if (iscompound(t)) {
      mk_term **items = mk_items(t);
      uint32_t i;
      for (i = 0; i < t->n; i++) {
        if (dies(items[i])) {
          setnext(items[i], pending);
          pending = items[i];
        }
      }
    }
    mk_pool_free(t, termsize((mk_kind)t->kind, t->n));
    live_terms--;
  }
}

/* }====================================================== */


/*
** {======================================================
** Atoms
** =======================================================
*/

mk_term *mk_int (int64_t i) {
  mk_term *t = newterm(MK_INT, 0);
  if (t == NULL) return NULL;
  t->v.i = i;
  t->hash = hfinal(hmix64(HSEED ^ MK_INT, (uint64_t)i));
  return t;
}

static uint64_t floatbits (double f) {
  uint64_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

/*
** An integral float that fits an int64 becomes an integer, so that 3.0
** and 3 are the same term (and -0.0 is 0).  Every NaN is stored as the
** one canonical NaN, which is structurally equal to itself: terms compare
** by bits, not by IEEE ==, so a NaN topic can be routed to.
*/
mk_term *mk_float (double f) {
  mk_term *t;
  /* 2^63 is exact as a double; the test also rejects NaN */
  if (f >= -9223372036854775808.0 && f < 9223372036854775808.0 &&
      f == (double)(int64_t)f)
    return mk_int((int64_t)f);
  if (f != f) f = NAN;
  t = newterm(MK_FLOAT, 0);
  if (t == NULL) return NULL;
  t->v.f = f;
  t->hash = hfinal(hmix64(HSEED ^ MK_FLOAT, floatbits(f)));
  return t;
}

mk_term *mk_str (const char *s, size_t len) {
  mk_term *t;
  if (len > UINT32_MAX) return NULL;
  t = newterm(MK_STR, (uint32_t)len);
  if (t == NULL) return NULL;
  if (len > 0) memcpy(mk_strdata(t), s, len);
  mk_strdata(t)[len] = '\0';
  return t;                        /* its hash: when asked (mk_hash) */
}

mk_term *mk_str_room (size_t cap) {
  return cap > UINT32_MAX ? NULL : newterm(MK_STR, (uint32_t)cap);
}

/* The term keeps its block when len fills at least three quarters of it:
** what counts a term's bytes by its length (an output queue's limits)
** then misses at most a third more.  It is freed later by the size len
** gives (termsize), which is right for the pool only while that size is
** of a large block too (pool.h: blocks of more than MK_POOL_MAX bytes are
** filed by the block's own size, smaller ones by the size given): a fill
** that small is copied. */
mk_term *mk_str_fill (mk_term *t, size_t len) {
  mk_term *u;
  if (len <= t->n && len >= t->n - t->n / 4 &&
      (termsize(MK_STR, (uint32_t)len) > MK_POOL_MAX ||
       termsize(MK_STR, t->n) <= MK_POOL_MAX)) {
    t->n = (uint32_t)len;
    mk_strdata(t)[len] = '\0';
    return t;
  }
  u = mk_str(mk_strdata(t), len <= t->n ? len : t->n);
  mk_unref(t);
  return u;
}

mk_term *mk_cstr (const char *s) {
  return mk_str(s, strlen(s));
}

/* }====================================================== */


/*
** {======================================================
** Record types, interned in a chained hash table keyed by (label, arity)
** =======================================================
*/

static struct {
  mk_rtype **bucket;
  size_t size;      /* number of buckets: 0 or a power of 2 */
  size_t count;     /* number of interned types */
} rtypes = { NULL, 0, 0 };

#define MINRTBUCKETS  32

static uint32_t rthash (const char *label, size_t len, uint32_t arity) {
  return hfinal(hmix(hbytes(HSEED ^ MK_REC, label, len), arity));
}

static int rtresize (size_t newsize) {
  mk_rtype **nb = (mk_rtype **)calloc(newsize, sizeof(mk_rtype *));
  size_t i;
  if (nb == NULL) return -1;
  for (i = 0; i < rtypes.size; i++) {
    mk_rtype *rt = rtypes.bucket[i];
    while (rt != NULL) {
      mk_rtype *next = rt->chain;
      size_t h = rt->hash & (newsize - 1);
      rt->chain = nb[h];
      nb[h] = rt;
      rt = next;
    }
  }
  free(rtypes.bucket);
  rtypes.bucket = nb;
  rtypes.size = newsize;
  return 0;
}

static void freenames (char **names, uint32_t n) {
  uint32_t i;
  if (names == NULL) return;
  for (i = 0; i < n; i++) free(names[i]);
  free(names);
}

static char *dupmem (const char *s, size_t len) {
  char *d = (char *)malloc(len + 1);
  if (d == NULL) return NULL;
  memcpy(d, s, len);
  d[len] = '\0';
  return d;
}

/* Copy all the names first, so that a failure leaves rt untouched. */
static int setnames (mk_rtype *rt, const char *const *names) {
  char **nn;
  uint32_t i;
  if (rt->arity == 0) return 0;
  nn = (char **)calloc(rt->arity, sizeof(char *));
  if (nn == NULL) return -1;
  for (i = 0; i < rt->arity; i++) {
    const char *s = names[i] ? names[i] : "";
    if ((nn[i] = dupmem(s, strlen(s))) == NULL) {
      freenames(nn, i);
      return -1;
    }
  }
  freenames(rt->names, rt->arity);
  rt->names = nn;
  return 0;
}

/* Do names (not NULL) name rt's fields as rt->names does? */
static int samenames (const mk_rtype *rt, const char *const *names) {
  uint32_t i;
  for (i = 0; i < rt->arity; i++)
    if (strcmp(rt->names[i], names[i] ? names[i] : "") != 0) return 0;
  return 1;
}

mk_rtype *mk_rtype_get (const char *label, size_t labellen, uint32_t arity,
                        const char *const *names) {
  uint32_t h;
  mk_rtype *rt;
  if (label == NULL) label = "";  /* (with labellen 0) */
  if (memchr(label, '\0', labellen) != NULL) { errno = EINVAL; return NULL; }
  h = rthash(label, labellen, arity);
  if (rtypes.size > 0) {
    for (rt = rtypes.bucket[h & (rtypes.size - 1)]; rt; rt = rt->chain) {
      if (rt->hash == h && rt->arity == arity && rt->labellen == labellen &&
          memcmp(rt->label, label, labellen) == 0) {
        /* Named once: other names would rename the fields under every
        ** holder of the type (r.x would break elsewhere), so refuse them. */
        if (names != NULL && rt->names != NULL && !samenames(rt, names)) {
          errno = EEXIST;
          return NULL;
        }
        if (names != NULL && rt->names == NULL && setnames(rt, names) != 0) {
          errno = ENOMEM;
          return NULL;
        }
        rt->refs++;
        return rt;
      }
    }
  }
  /* a new type; grow first, but a full table still works if growing fails */
  if (rtypes.count >= rtypes.size &&
      rtresize(rtypes.size ? rtypes.size * 2 : MINRTBUCKETS) != 0 &&
      rtypes.size == 0) {
    errno = ENOMEM;
    return NULL;
  }
  rt = (mk_rtype *)malloc(sizeof(mk_rtype));
  if (rt == NULL) { errno = ENOMEM; return NULL; }
  rt->refs = 1;
  rt->arity = arity;
  rt->hash = h;
  rt->labellen = labellen;
  rt->names = NULL;
  if ((rt->label = dupmem(label, labellen)) == NULL ||
      (names != NULL && setnames(rt, names) != 0)) {
    free(rt->label);
    free(rt);
    errno = ENOMEM;
    return NULL;
  }
  rt->chain = rtypes.bucket[h & (rtypes.size - 1)];
  rtypes.bucket[h & (rtypes.size - 1)] = rt;
  rtypes.count++;
  return rt;
}

void mk_rtype_ref (mk_rtype *rt) {
  if (rt != NULL) rt->refs++;
}

void mk_rtype_unref (mk_rtype *rt) {
  mk_rtype **p;
  if (rt == NULL || --rt->refs > 0) return;
  for (p = &rtypes.bucket[rt->hash & (rtypes.size - 1)]; *p != rt; p = &(*p)->chain)
    ;
  *p = rt->chain;
  freenames(rt->names, rt->arity);
  free(rt->label);
  free(rt);
  if (--rtypes.count == 0) {  /* release the table too: leak checks stay clean */
    free(rtypes.bucket);
    rtypes.bucket = NULL;
    rtypes.size = 0;
  }
}

int mk_rtype_field (const mk_rtype *rt, const char *name) {
  uint32_t i;
  if (rt == NULL || rt->names == NULL) return -1;
  /* The first byte before the call: a handler reading a record's field
  ** (m.subpacket) looks it up on every message, and most names differ
  ** there. */
  for (i = 0; i < rt->arity; i++)
    if (rt->names[i][0] == name[0] && strcmp(rt->names[i], name) == 0) return (int)i;
  return -1;
}

/* }====================================================== */


/*
** {======================================================
** Compounds
** =======================================================
*/

static mk_term *newcompound (mk_kind kind, uint32_t n) {
  mk_term *t;
  uint32_t i;
  size_t extra = (size_t)n * sizeof(mk_term *);
  if (extra / sizeof(mk_term *) != n ||
      extra > SIZE_MAX - sizeof(mk_term) - sizeof(uint32_t))
    return NULL;  /* only possible where size_t is narrow */
  t = newterm(kind, n);
  if (t == NULL) return NULL;
  for (i = 0; i < n; i++) mk_items(t)[i] = &nil_obj;
  *sizeslot(t) = 0;  /* set when sealed */
  return t;
}

mk_term *mk_rec_new (mk_rtype *rt) {
  mk_term *t;
  if (rt == NULL) return NULL;
  t = newcompound(MK_REC, rt->arity);
  if (t == NULL) return NULL;
  mk_rtype_ref(rt);
  t->v.rt = rt;
  return t;
}

mk_term *mk_seq_new (uint32_t n) {
  return newcompound(MK_SEQ, n);
}

void mk_set (mk_term *c, uint32_t i, mk_term *item) {
  mk_term *old;
  if (c == NULL || !iscompound(c) || i >= c->n) {  /* misuse: still steal */
    mk_unref(item);
    return;
  }
  old = mk_items(c)[i];
  mk_items(c)[i] = item ? item : &failed_obj;
  /* a slot is filled once, as a rule, over the nil it was made with */
  if (old->refs != MK_IMMORTAL) mk_unref(old);
}

/*
** The depth and size limits.  mk_seal enforces them on every compound
** built.  merge (mk_unify) seals with hard maxima instead: a unifier is
** never deeper than its inputs, which were within the limit when they were
** made, and it is never larger than the two together, which is less than
** 2 * MK_TERM_SIZE_MAX nodes for inputs within MK_TERM_SIZE_MAX (term.h,
** mk_unify).
*/
#define MERGE_SIZE_MAX  (2 * MK_TERM_SIZE_MAX - 1)

_Static_assert((uint64_t)MERGE_SIZE_MAX <= UINT32_MAX,
               "the unifier of two terms of the largest size fits a uint32_t");

static size_t depth_limit = MK_TERM_DEPTH_DEFAULT;
static size_t size_limit = MK_TERM_SIZE_DEFAULT;

size_t mk_term_depth_limit (void) {
  return depth_limit;
}

int mk_term_set_depth_limit (size_t n) {
  if (n == 0 || n > MK_TERM_DEPTH_MAX) return -1;
  depth_limit = n;
  return 0;
}

size_t mk_term_size_limit (void) {
  return size_limit;
}

int mk_term_set_size_limit (size_t n) {
  if (n == 0 || n > MK_TERM_SIZE_MAX) return -1;
  size_limit = n;
  return 0;
}

size_t mk_term_size (const mk_term *t) {
  return iscompound(t) ? *sizeslot(t) : 1;
}

/* A compound's hash, from its items' (seal computes the same in its own
** pass when every item has one). */
static uint32_t hcompound (const mk_term *c) {
  uint32_t h = HSEED ^ c->kind, i;
  if (c->kind == MK_REC) h = hmix(h, c->v.rt->hash);
  for (i = 0; i < c->n; i++) h = hmix(h, mk_hash(mk_items(c)[i]));
  return hfinal(h ^ c->n);
}

/* Items are sealed already, so ground, depth and size come from them in
** O(n), and so does the hash when every item has its own (else it is
** left to be computed when asked for: a message holding a payload is not
** hashed either).  The size is summed in 64 bits, where fewer than 2^32
** items of fewer than 2^32 nodes each cannot wrap.  Too deep or too
** large: released, NULL. */
static mk_term *seal (mk_term *c, size_t maxdepth, size_t maxsize) {
  uint32_t h, i;
  int ground = 1, hashed = 1;
  unsigned depth = 0;
  uint64_t size = 1;
  if (c == NULL || !iscompound(c)) return c;
  h = HSEED ^ c->kind;                       /* as hcompound, in this pass */
  if (c->kind == MK_REC) h = hmix(h, c->v.rt->hash);
  for (i = 0; i < c->n; i++) {
    const mk_term *it = mk_items(c)[i];
    h = hmix(h, it->hash);
    hashed &= it->hash != 0;
    ground &= it->ground;
    if (it->depth > depth) depth = it->depth;
    size += mk_term_size(it);
  }
  if (depth + 1 > maxdepth || size > maxsize) {
    mk_unref(c);
    return NULL;
  }
  c->hash = hashed ? hfinal(h ^ c->n) : 0;
  c->ground = (uint8_t)ground;
  c->depth = (uint16_t)(depth + 1);
  *sizeslot(c) = (uint32_t)size;
  return c;
}

mk_term *mk_seal (mk_term *c) {
  return seal(c, depth_limit, size_limit);
}

mk_term *mk_rec (mk_rtype *rt, ...) {
  mk_term *t = mk_rec_new(rt);
  uint32_t i, n = rt ? rt->arity : 0;
  va_list ap;
  va_start(ap, rt);
  for (i = 0; i < n; i++) {
    mk_term *it = va_arg(ap, mk_term *);
    /* each slot once, over its nil: stored as mk_set would store it */
    if (t != NULL) mk_items(t)[i] = it ? it : &failed_obj;
    else mk_unref(it);  /* the arguments are stolen even on failure */
  }
  va_end(ap);
  return seal(t, depth_limit, size_limit);
}

/* }====================================================== */


/*
** {======================================================
** Equality and unification.  mk_equal and mk_unifies recurse on all
** items but the last and loop on the last one, so right-nested terms
** (cons lists) run in constant stack; merge recurses on every item.  The
** depth of a term bounds the stack of all three (term.h, "Depth"), and
** its size their time ("Size"): each walks a and b together, place by
** place of the trees they stand for, so a shared item is walked again at
** each place it occurs, but there are at most min(size(a), size(b)).
** =======================================================
*/

int mk_equal (const mk_term *a, const mk_term *b) {
  for (;;) {
    uint32_t i, n;
    if (a == b) return 1;
    if (a->kind != b->kind || a->n != b->n ||
        (a->hash != 0 && b->hash != 0 && a->hash != b->hash))
      return 0;
    switch (a->kind) {
      case MK_INT: return a->v.i == b->v.i;
      case MK_FLOAT: return floatbits(a->v.f) == floatbits(b->v.f);
      case MK_STR: return memcmp(mk_strdata(a), mk_strdata(b), a->n) == 0;
      case MK_REC:
        if (a->v.rt != b->v.rt) return 0;
        /* FALLTHROUGH */
      case MK_SEQ:
        n = a->n;
        if (n == 0) return 1;
        for (i = 0; i + 1 < n; i++)
          if (!mk_equal(mk_items(a)[i], mk_items(b)[i])) return 0;
        a = mk_items(a)[n - 1];
        b = mk_items(b)[n - 1];
        break;
      default: return 1;  /* singletons of the same kind */
    }
  }
}

/* A string's or a compound's hash, the first time it is asked for: kept
** in the term, which is otherwise immutable (terms are single-threaded,
** term.h).  A compound's needs its items', so this recurses as deep as
** the term is, like mk_equal. */
static uint32_t rehash (mk_term *t) {
  t->hash = t->kind == MK_STR ? hfinal(hbytes(HSEED ^ MK_STR, mk_strdata(t), t->n))
                              : hcompound(t);
  return t->hash;
}

uint32_t mk_hash (const mk_term *t) {
  return t->hash != 0 ? t->hash : rehash((mk_term *)t);
}

int mk_unifies (const mk_term *a, const mk_term *b) {
  for (;;) {
    uint32_t i, n;
    if (a == b || a->kind == MK_WILD || b->kind == MK_WILD) return 1;
    if (a->kind != b->kind || a->n != b->n) return 0;
    if (a->ground && b->ground) return mk_equal(a, b);
    /* one of them holds a wildcard, so both are compounds */
    if (a->kind == MK_REC && a->v.rt != b->v.rt) return 0;
    n = a->n;  /* > 0, or it would be ground */
    for (i = 0; i + 1 < n; i++)
      if (!mk_unifies(mk_items(a)[i], mk_items(b)[i])) return 0;
    a = mk_items(a)[n - 1];
    b = mk_items(b)[n - 1];
  }
}

/*
** The unifier of two terms known to unify.  Wildcards are anonymous, so
** the most general unifier is just the pointwise merge: each wildcard is
** replaced by the other side's subterm.  Whole subterms are shared when
** one side already is the answer.  NULL on allocation failure, or when
** the unifier would have 2^32 nodes or more (term.h, mk_unify).
*/
static mk_term *merge (mk_term *a, mk_term *b) {
  mk_term *c = NULL;
  uint32_t i, j;
  int isa = 1, isb = 1;
  if (a == b || b->kind == MK_WILD || a->ground) return mk_ref(a);
  if (a->kind == MK_WILD || b->ground) return mk_ref(b);
  for (i = 0; i < a->n; i++) {
    mk_term *ai = mk_items(a)[i], *bi = mk_items(b)[i];
    mk_term *m = merge(ai, bi);
    if (m == NULL) {
      mk_unref(c);
      return NULL;
    }
    if (c == NULL) {
      /* No node is made while one side is still the answer so far (two
      ** patterns, one an instance of the other: an endpoint meeting its
      ** peers' equal topics, as a presence does per peer). */
      int wasa = isa;
      isa &= (m == ai);
      isb &= (m == bi);
      if (isa || isb) {
        mk_unref(m);            /* ai or bi: a or b holds it */
        continue;
      }
      c = (a->kind == MK_REC) ? mk_rec_new(a->v.rt) : mk_seq_new(a->n);
      if (c == NULL) {
        mk_unref(m);
        return NULL;
      }
      /* The items before i are those of the side that was the answer. */
      for (j = 0; j < i; j++) mk_set(c, j, mk_ref(mk_items(wasa ? a : b)[j]));
    }
    mk_set(c, i, m);
  }
  if (c == NULL) return mk_ref(isa ? a : b);
  return seal(c, MK_TERM_DEPTH_MAX, MERGE_SIZE_MAX);
}

mk_term *mk_unify (mk_term *a, mk_term *b) {
  return mk_unifies(a, b) ? merge(a, b) : NULL;
}

/* }====================================================== */


/*
** {======================================================
** mk_repr.  The text goes into a growing buffer that stops taking bytes
** at `max`; once it is full, the walk stops too, so a term whose text
** would be huge (a long sequence, or a DAG that shares subterms) costs
** no more than `max` to show.  The walk recurses once per level of the
** term (term.h, "Depth") and visits each of its size nodes once ("Size").
** =======================================================
*/

typedef struct Buf {
  char *p;
  size_t n, cap;
  size_t max;       /* take no more than this many bytes */
  int cut;          /* something was left out: the text ends with "..." */
  int oom;
} Buf;

#define stopped(b)  ((b)->cut || (b)->oom)

/* Make room for `extra` more bytes (plus the final NUL). */
static int reserve (Buf *b, size_t extra) {
  size_t need;
  if (b->oom) return 0;
  need = b->n + extra + 1;
  if (need < b->n) return b->oom = 1, 0;
  if (need > b->cap) {
    size_t ncap = b->cap ? b->cap : 64;
    char *np;
    while (ncap < need) {
      if (ncap > SIZE_MAX / 2) { ncap = need; break; }
      ncap *= 2;
    }
    np = (char *)realloc(b->p, ncap);
    if (np == NULL) return b->oom = 1, 0;
    b->p = np;
    b->cap = ncap;
  }
  return 1;
}

/* How many of `len` more bytes the text takes (fewer past max, which
** cuts it), with room made for them. */
static size_t room (Buf *b, size_t len) {
  if (stopped(b)) return 0;
  if (len > b->max - b->n) {
    len = b->max - b->n;
    b->cut = 1;
  }
  return reserve(b, len) ? len : 0;
}

static void addmem (Buf *b, const char *s, size_t len) {
  len = room(b, len);
  memcpy(b->p + b->n, s, len);
  b->n += len;
}

static void addlit (Buf *b, const char *s) {
  addmem(b, s, strlen(s));
}

static void addchar (Buf *b, char c) {
  if (room(b, 1) == 1) b->p[b->n++] = c;
}

/* Room enough for any %lld or %.17g, and a ".0".  Numbers are printed in
** place, past the text, then kept as far as max allows: no buffer on the
** stack, which every level of addterm would carry. */
#define NUMBUF  64

static void addint (Buf *b, int64_t i) {
  int len;
  if (stopped(b) || !reserve(b, NUMBUF)) return;
  len = snprintf(b->p + b->n, NUMBUF, "%lld", (long long)i);
  b->n += room(b, (size_t)len);
}

/* A float must read back as a float, so "1e+300" stays but "5" gets ".0". */
static void addfloat (Buf *b, double f) {
  char *s;
  size_t len;
  if (isnan(f)) { addlit(b, "nan"); return; }
  if (isinf(f)) { addlit(b, f > 0 ? "inf" : "-inf"); return; }
  if (stopped(b) || !reserve(b, NUMBUF)) return;
  s = b->p + b->n;
  len = (size_t)snprintf(s, NUMBUF - 2, "%.17g", f);
  if (strspn(s, "-0123456789") == len) {
    s[len++] = '.';
    s[len++] = '0';
  }
  b->n += room(b, len);
}

static int plain (unsigned char c) {
  return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
}

/* Printable ASCII stays; every other byte is escaped. */
static void addquoted (Buf *b, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t i = 0;
  addchar(b, '"');
  while (i < len && !stopped(b)) {
    unsigned char c = (unsigned char)s[i];
    size_t j = i;
    while (j < len && plain((unsigned char)s[j])) j++;
    if (j > i) {                  /* a run of plain bytes in one copy */
      addmem(b, s + i, j - i);
      i = j;
      continue;
    }
    switch (c) {
      case '"': addlit(b, "\\\""); break;
      case '\\': addlit(b, "\\\\"); break;
      case '\n': addlit(b, "\\n"); break;
      case '\t': addlit(b, "\\t"); break;
      case '\r': addlit(b, "\\r"); break;
      default:
        addlit(b, "\\x");
        addchar(b, hex[c >> 4]);
        addchar(b, hex[c & 15]);
    }
    i++;
  }
  addchar(b, '"');
}

/* A label printed bare reads back as itself and as nothing else: printable
** ASCII but a blank and the bytes that end a word (wordch).  Any other is
** written as a string before its '(': a label can then neither end its
** record early, so that two records print alike, nor carry a newline or
** an escape into a trace line. */
static int barelabel (const char *l, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)l[i];
    if (c <= ' ' || c >= 0x7f || c == '(' || c == ')' || c == '[' || c == ']' ||
        c == ',' || c == '"')
      return 0;
  }
  return n > 0;
}

static void addterm (Buf *b, const mk_term *t) {
  uint32_t i;
  switch (mk_kindof(t)) {
    case MK_NIL: addlit(b, "nil"); break;
    case MK_FALSE: addlit(b, "false"); break;
    case MK_TRUE: addlit(b, "true"); break;
    case MK_INT: addint(b, t->v.i); break;
    case MK_FLOAT: addfloat(b, t->v.f); break;
    case MK_STR: addquoted(b, mk_strdata(t), t->n); break;
    case MK_WILD: addchar(b, '_'); break;
    case MK_EOF: addlit(b, "#eof"); break;
    case MK_REC: case MK_SEQ:
      if (t->kind == MK_REC) {
        const mk_rtype *rt = t->v.rt;
        if (barelabel(rt->label, rt->labellen)) addmem(b, rt->label, rt->labellen);
        else addquoted(b, rt->label, rt->labellen);
        addchar(b, '(');
      }
      else addchar(b, '[');
      for (i = 0; i < t->n && !stopped(b); i++) {
        if (i > 0) addlit(b, ", ");
        addterm(b, mk_items(t)[i]);
      }
      addchar(b, t->kind == MK_REC ? ')' : ']');
      break;
  }
}

char *mk_repr_max (const mk_term *t, size_t max, size_t *len) {
  Buf b = { NULL, 0, 0, 0, 0, 0 };
  b.max = max;
  addterm(&b, t);
  if (b.cut && !b.oom) {        /* past max: room for the mark */
    b.max = SIZE_MAX;
    b.cut = 0;
    addlit(&b, "...");
  }
  if (!reserve(&b, 0)) {
    free(b.p);
    return NULL;
  }
  b.p[b.n] = '\0';
  if (len != NULL) *len = b.n;
  return b.p;
}

char *mk_repr (const mk_term *t, size_t *len) {
  return mk_repr_max(t, SIZE_MAX, len);
}

/* }====================================================== */


/*
** {======================================================
** mk_read: the text mk_repr writes, read back.  Recursive descent, one
** level of C recursion per level of the term, refused past the depth
** limit before it recurses further (so the stack is bounded as the other
** walks', term.h "Depth"); the size limit is mk_seal's.
** =======================================================
*/

typedef struct Rd {
  const char *p, *end, *start;
  const char *err;          /* static text, once reading failed */
} Rd;

static int rdfail (Rd *r, const char *why) {
  if (r->err == NULL) r->err = why;
  return 0;
}

static void rdblank (Rd *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
    r->p++;
}

/* A byte that may be part of a bare word (a label, a number, a name). */
static int wordch (unsigned char c) {
  return c > ' ' && c != '(' && c != ')' && c != '[' && c != ']' && c != ',' &&
         c != '"' && c != 0x7f;
}

static int hexdigit (int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static mk_term *rdstring (Rd *r) {
  Buf b = { NULL, 0, 0, SIZE_MAX, 0, 0 };
  mk_term *t;
  r->p++;                                   /* the opening quote */
  while (r->p < r->end && *r->p != '"') {
    char c = *r->p++;
    if (c == '\\') {
      int h, l;
      if (r->p >= r->end) break;
      switch (c = *r->p++) {
        case '"': case '\\': break;
        case 'n': c = '\n'; break;
        case 't': c = '\t'; break;
        case 'r': c = '\r'; break;
        case 'x':
          if (r->end - r->p < 2 || (h = hexdigit(r->p[0])) < 0 || (l = hexdigit(r->p[1])) < 0) {
            free(b.p);
            return rdfail(r, "\\x needs two hex digits"), NULL;
          }
          c = (char)(h * 16 + l);
          r->p += 2;
          break;
        default:
          free(b.p);
          r->p--;
          return rdfail(r, "unknown escape in a string (\\\" \\\\ \\n \\t \\r \\xHH)"), NULL;
      }
    }
    addchar(&b, c);
  }
  if (r->p >= r->end) { free(b.p); return rdfail(r, "unterminated string"), NULL; }
  r->p++;
  t = b.oom ? NULL : mk_str(b.p ? b.p : "", b.n);
  free(b.p);
  if (t == NULL) rdfail(r, "out of memory");
  return t;
}

static mk_term *rdterm (Rd *r, size_t depth);

/* Items up to `close`, then the compound: a sequence, or a record of the
** label l (ll bytes). */
static mk_term *rdcompound (Rd *r, char close, const char *l, size_t ll, size_t depth) {
  mk_term **items = NULL, *c = NULL;
  uint32_t n = 0, cap = 0, i;
  if (depth >= depth_limit) return rdfail(r, "a term deeper than the depth limit"), NULL;
  r->p++;                                   /* the opening bracket */
  rdblank(r);
  if (r->p < r->end && *r->p == close) r->p++;
  else for (;;) {
    mk_term *it = rdterm(r, depth + 1);
    if (it == NULL) goto done;
    if (n == cap) {
      mk_term **ni = cap < UINT32_MAX / 2 ? realloc(items, (cap ? cap * 2 : 4) * sizeof *ni) : NULL;
      if (ni == NULL) { mk_unref(it); rdfail(r, "out of memory"); goto done; }
      items = ni;
      cap = cap ? cap * 2 : 4;
    }
    items[n++] = it;
    rdblank(r);
    if (r->p < r->end && *r->p == ',') { r->p++; continue; }
    if (r->p < r->end && *r->p == close) { r->p++; break; }
    rdfail(r, close == ')' ? "expected ',' or ')'" : "expected ',' or ']'");
    goto done;
  }
  if (l != NULL) {
    mk_rtype *rt = mk_rtype_get(l, ll, n, NULL);
    c = mk_rec_new(rt);
    mk_rtype_unref(rt);
  } else {
    c = mk_seq_new(n);
  }
  if (c == NULL) { rdfail(r, "out of memory"); goto done; }
  for (i = 0; i < n; i++) mk_set(c, i, items[i]);
  n = 0;
  if ((c = mk_seal(c)) == NULL) rdfail(r, "a term past the depth or size limit");
done:
  for (i = 0; i < n; i++) mk_unref(items[i]);
  free(items);
  return c;
}

/* A bare word: a name, a number, or a record's label before '('. */
static mk_term *rdword (Rd *r, size_t depth) {
  const char *w = r->p;
  size_t n;
  char num[64], *end;
  while (r->p < r->end && wordch((unsigned char)*r->p)) r->p++;
  n = (size_t)(r->p - w);
  if (n == 0) return rdfail(r, "expected a term"), NULL;
  rdblank(r);
  if (r->p < r->end && *r->p == '(') return rdcompound(r, ')', w, n, depth);
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(w, lit, n) == 0)
  if (IS("nil")) return mk_nil();
  if (IS("true")) return mk_bool(1);
  if (IS("false")) return mk_bool(0);
  if (IS("_")) return mk_wild();
  if (IS("#eof")) return mk_eof();
  if (IS("nan")) return mk_float(NAN);
  if (IS("inf")) return mk_float(HUGE_VAL);
  if (IS("-inf")) return mk_float(-HUGE_VAL);
#undef IS
  if (n < sizeof num && (isdigit((unsigned char)w[0]) || w[0] == '-' || w[0] == '.')) {
    long long i;
    double f;
    memcpy(num, w, n);
    num[n] = '\0';
    errno = 0;
    i = strtoll(num, &end, 10);
    if (*end == '\0' && errno == 0) return mk_int((int64_t)i);
    f = strtod(num, &end);
    if (*end == '\0' && !isnan(f) && !isinf(f)) return mk_float(f);
  }
  r->p = w;
  return rdfail(r, "not a term (nil, true, false, a number, a \"string\", _, #eof, [...], label(...))"), NULL;
}

static mk_term *rdterm (Rd *r, size_t depth) {
  rdblank(r);
  if (r->p >= r->end) return rdfail(r, "expected a term"), NULL;
  if (*r->p == '"') {                      /* a string, or a quoted label */
    mk_term *t = rdstring(r), *c;
    rdblank(r);
    if (t == NULL || r->p >= r->end || *r->p != '(') return t;
    if (memchr(mk_strdata(t), '\0', t->n) != NULL) {
      mk_unref(t);
      return rdfail(r, "a record label must not contain a NUL byte"), NULL;
    }
    c = rdcompound(r, ')', mk_strdata(t), t->n, depth);
    mk_unref(t);
    return c;
  }
  if (*r->p == '[') return rdcompound(r, ']', NULL, 0, depth);
  return rdword(r, depth);
}

mk_term *mk_read (const char *s, size_t len, size_t *pos, const char **err) {
  Rd r;
  mk_term *t;
  r.p = r.start = s;
  r.end = s + len;
  r.err = NULL;
  t = s ? rdterm(&r, 0) : NULL;
  if (t != NULL) {
    rdblank(&r);
    if (r.p < r.end) {
      mk_unref(t);
      t = NULL;
      rdfail(&r, "more text after the term");
    }
  }
  if (t == NULL && r.err == NULL) r.err = "out of memory";
  if (err != NULL) *err = t ? NULL : r.err;
  if (pos != NULL) *pos = s ? (size_t)(r.p - r.start) : 0;
  return t;
}

/* }====================================================== */

/*
** cbor.c: terms to CBOR and back (cbor.h; docs/cluster.md, "Terms on the
** wire").
**
** The heads (a major type and its argument, in the shortest form) and
** the doubles are written by code of our own, byte for byte as libcbor's
** cbor_encode_* write them.  The input is read one head at a time: the
** heads a term is written with (integers, strings, definite arrays and
** maps, tags, null, false, true, undefined, single and double floats) by
** a reader of our own (next), every other one (half floats, simple
** values, reserved bytes, indefinite lengths, the break) by libcbor's
** cbor_stream_decode, which calls back with what it found and claims no
** byte past the end of the input.  Ours do what libcbor does for the
** heads they take, without a call into it and a callback per head, which
** cost more than the head (docs/performance.md, "bench-cluster").
** spec/fuzz/fuzz_cbor.c builds this file a second time with
** MK_CBOR_LIBCBOR_HEADS defined, every head read and written by libcbor,
** and checks that the two agree on every input, in what they decode, the
** reasons they refuse and the bytes they write back.
**
** The walk over the items is ours: a stack of the compounds being filled,
** bounded by the depth limit, so that untrusted input never recurses.
** cbor_load was the alternative, and was rejected: it builds a tree of
** libcbor items first, allocating a
** definite array's slots from the length in the input before its items
** are read (a few bytes announcing 2^32 items ask for 32 GiB), and
** libcbor frees such a tree by recursion, once per level of nesting
** (cbor_decref), which an input of nested arrays turns into a stack
** overflow.  Here, a length is believed only as far as the bytes left can
** hold it (an item takes one byte at least) and the size limit allows.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* libcbor's parts by their own paths: its <cbor.h> would be ours, since
** runtime/ comes first in the include path. */
#include <cbor/callbacks.h>
#include <cbor/common.h>
#include <cbor/encoding.h>
#include <cbor/streaming.h>

#include "cbor.h"

/* 1: every head read and written by libcbor (see above): the fuzzer's
** reference. */
#ifndef MK_CBOR_LIBCBOR_HEADS
#define MK_CBOR_LIBCBOR_HEADS 0
#endif

/*
** {======================================================
** Encoding
** =======================================================
*/

/* The bytes written so far: p owned (malloc'd), n used of cap. */
typedef struct Out {
  unsigned char *p;
  size_t n, cap;
} Out;

/* The most bytes a compound writes before its items: a tag, an array
** head and a record label's head, 9 bytes at most each. */
#define HEADROOM  32

/* Room for `more` bytes past what reserve found missing; 0 when memory
** runs out. */
static int grow (Out *o, size_t more) {
  size_t cap;
  unsigned char *p;
  if (more > SIZE_MAX / 2 - o->n) return 0;
  cap = o->cap ? o->cap : 64;
  while (cap - o->n < more) cap *= 2;
  p = realloc(o->p, cap);
  if (p == NULL) return 0;
  o->p = p;
  o->cap = cap;
  return 1;
}

/* Room for `more` bytes; 0 when memory runs out.  Asked for every item
** written, and seldom short of it: growing is out of line. */
static inline int reserve (Out *o, size_t more) {
  return o->cap - o->n >= more || grow(o, more);
}

/* Heads, written in the shortest form (RFC 8949, 4.2.1) as libcbor's
** cbor_encode_* write them, into room reserved beforehand (9 bytes at
** most).  Our own: a call into libcbor per head cost more than the head;
** with MK_CBOR_LIBCBOR_HEADS, libcbor's, for the fuzzer to compare. */
#define MT_UINT    0x00
#define MT_NEGINT  0x20
#define MT_BYTES   0x40
#define MT_ARRAY   0x80
#define MT_TAG     0xc0

#define AT(o)  ((o)->p + (o)->n), ((o)->cap - (o)->n)

/* Static, so that the encoder's calls are inlined (the public names may be
** interposed in a shared library, and are not). */
static size_t head_len (uint64_t v) {
  return v < 24 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffff ? 5 : 9;
}

static size_t put_head (unsigned char *p, unsigned mt, uint64_t v) {
  size_t n = head_len(v), i;
  if (n == 1) {
    *p = (unsigned char)(mt << 5 | v);
    return 1;
  }
  *p = (unsigned char)(mt << 5 | (n == 2 ? 24 : n == 3 ? 25 : n == 5 ? 26 : 27));
  for (i = n - 1; i >= 1; i--, v >>= 8) p[i] = (unsigned char)v;   /* big-endian */
  return n;
}

size_t mk_cbor_head_len(uint64_t v) { return head_len(v); }

size_t mk_cbor_put_head(unsigned char *p, unsigned mt, uint64_t v) { return put_head(p, mt, v); }

static void head (Out *o, unsigned mt, uint64_t u) {
  if (MK_CBOR_LIBCBOR_HEADS) {
    switch (mt) {
      case MT_UINT: o->n += cbor_encode_uint(u, AT(o)); break;
      case MT_NEGINT: o->n += cbor_encode_negint(u, AT(o)); break;
      case MT_BYTES: o->n += cbor_encode_bytestring_start((size_t)u, AT(o)); break;
      case MT_ARRAY: o->n += cbor_encode_array_start((size_t)u, AT(o)); break;
      default: o->n += cbor_encode_tag(u, AT(o)); break;
    }
    return;
  }
  o->n += put_head(o->p + o->n, mt >> 5, u);
}

/* null (0xf6), false, true (0xf4, 0xf5): the simple value v */
static void simple (Out *o, unsigned char v) {
  if (MK_CBOR_LIBCBOR_HEADS) {
    o->n += v == 0xf6 ? cbor_encode_null(AT(o)) : cbor_encode_bool(v == 0xf5, AT(o));
    return;
  }
  o->p[o->n++] = v;
}

/* A double, always as one (0xfb), its bits big-endian. */
static void dbl (Out *o, double f) {
  uint64_t u;
  int i;
  if (MK_CBOR_LIBCBOR_HEADS) {
    o->n += cbor_encode_double(f, AT(o));
    return;
  }
  memcpy(&u, &f, sizeof u);
  o->p[o->n] = 0xfb;
  for (i = 8; i > 0; i--, u >>= 8) o->p[o->n + i] = (unsigned char)u;
  o->n += 9;
}

static int bytes (Out *o, const void *s, size_t len) {
  if (!reserve(o, 9 + len)) return 0;
  head(o, MT_BYTES, len);
  if (len > 0) memcpy(o->p + o->n, s, len);
  o->n += len;
  return 1;
}

/* Append t; 0 when memory runs out.  Recurses once per level of t, as
** term.c's algorithms do (term.h, "Depth"). */
static int encode (Out *o, const mk_term *t) {
  uint32_t i;
  if (!reserve(o, HEADROOM)) return 0;
  switch (mk_kindof(t)) {
    case MK_NIL: simple(o, 0xf6); return 1;
    case MK_FALSE: simple(o, 0xf4); return 1;
    case MK_TRUE: simple(o, 0xf5); return 1;
    case MK_INT:
      if (t->v.i >= 0) head(o, MT_UINT, (uint64_t)t->v.i);
      else head(o, MT_NEGINT, (uint64_t)(-1 - t->v.i));   /* -1 - n */
      return 1;
    case MK_FLOAT: dbl(o, t->v.f); return 1;
    case MK_STR: return bytes(o, mk_strdata(t), t->n);
    case MK_WILD: case MK_EOF:
      head(o, MT_TAG, t->kind == MK_WILD ? MK_CBOR_TAG_WILD : MK_CBOR_TAG_EOF);
      simple(o, 0xf6);
      return 1;
    case MK_REC:
      head(o, MT_TAG, MK_CBOR_TAG_RECORD);
      head(o, MT_ARRAY, (uint64_t)t->n + 1);
      if (!bytes(o, t->v.rt->label, t->v.rt->labellen)) return 0;
      break;
    case MK_SEQ:
      head(o, MT_ARRAY, t->n);
      break;
  }
  for (i = 0; i < t->n; i++)
    if (!encode(o, mk_items(t)[i])) return 0;
  return 1;
}

unsigned char *mk_cbor_encode (const mk_term *t, size_t *len) {
  Out o = { NULL, 0, 0 };
  if (!reserve(&o, HEADROOM)) return NULL;
  head(&o, MT_TAG, MK_CBOR_TAG_TERM);
  head(&o, MT_ARRAY, 2);
  head(&o, MT_UINT, MK_CBOR_VERSION);
  if (!encode(&o, t)) {
    free(o.p);
    return NULL;
  }
  *len = o.n;
  return o.p;
}

int mk_cbor_append (const mk_term *t, unsigned char **buf, size_t *len, size_t *cap) {
  Out o;
  int ok;
  o.p = *buf;
  o.n = *len;
  o.cap = *cap;
  ok = encode(&o, t);
  *buf = o.p;                   /* moved, maybe, even when memory ran out */
  *cap = o.cap;
  if (!ok) return -1;
  *len = o.n;
  return 0;
}

/* }====================================================== */


/*
** {======================================================
** Decoding
** =======================================================
*/

/* One head of the input, as cbor_stream_decode's callbacks report it. */
typedef enum {
  EV_UINT, EV_NEGINT, EV_BYTES, EV_ARRAY, EV_MAP, EV_TAG, EV_FLOAT, EV_NULL,
  EV_BOOL, EV_INDEF, EV_BREAK
} evkind;

typedef struct Ev {
  evkind kind;
  uint64_t u;                 /* EV_UINT, EV_NEGINT (n for -1 - n), EV_ARRAY, EV_TAG; EV_BOOL */
  double f;                   /* EV_FLOAT */
  const unsigned char *s;     /* EV_BYTES: borrowed from the input */
} Ev;

#define EV(ud)  ((Ev *)(ud))

static void on_u8 (void *ud, uint8_t v) { EV(ud)->kind = EV_UINT; EV(ud)->u = v; }
static void on_u16 (void *ud, uint16_t v) { EV(ud)->kind = EV_UINT; EV(ud)->u = v; }
static void on_u32 (void *ud, uint32_t v) { EV(ud)->kind = EV_UINT; EV(ud)->u = v; }
static void on_u64 (void *ud, uint64_t v) { EV(ud)->kind = EV_UINT; EV(ud)->u = v; }
static void on_n8 (void *ud, uint8_t v) { EV(ud)->kind = EV_NEGINT; EV(ud)->u = v; }
static void on_n16 (void *ud, uint16_t v) { EV(ud)->kind = EV_NEGINT; EV(ud)->u = v; }
static void on_n32 (void *ud, uint32_t v) { EV(ud)->kind = EV_NEGINT; EV(ud)->u = v; }
static void on_n64 (void *ud, uint64_t v) { EV(ud)->kind = EV_NEGINT; EV(ud)->u = v; }
/* Byte and text strings alike: market strings are bytes, and text read
** from the wire is taken as its bytes, unchecked. */
static void on_str (void *ud, cbor_data s, size_t n) {
  EV(ud)->kind = EV_BYTES; EV(ud)->s = s; EV(ud)->u = n;
}
static void on_indef (void *ud) { EV(ud)->kind = EV_INDEF; }
static void on_array (void *ud, size_t n) { EV(ud)->kind = EV_ARRAY; EV(ud)->u = n; }
static void on_map (void *ud, size_t n) { EV(ud)->kind = EV_MAP; EV(ud)->u = n; }
static void on_tag (void *ud, uint64_t v) { EV(ud)->kind = EV_TAG; EV(ud)->u = v; }
static void on_f4 (void *ud, float f) { EV(ud)->kind = EV_FLOAT; EV(ud)->f = f; }
static void on_f8 (void *ud, double f) { EV(ud)->kind = EV_FLOAT; EV(ud)->f = f; }
/* undefined reads as nil too: another language's "no value" may be it */
static void on_null (void *ud) { EV(ud)->kind = EV_NULL; }
static void on_bool (void *ud, bool b) { EV(ud)->kind = EV_BOOL; EV(ud)->u = b; }
static void on_break (void *ud) { EV(ud)->kind = EV_BREAK; }

static const struct cbor_callbacks callbacks = {
  .uint8 = on_u8, .uint16 = on_u16, .uint32 = on_u32, .uint64 = on_u64,
  .negint8 = on_n8, .negint16 = on_n16, .negint32 = on_n32, .negint64 = on_n64,
  .byte_string_start = on_indef, .byte_string = on_str,
  .string = on_str, .string_start = on_indef,
  .indef_array_start = on_indef, .array_start = on_array,
  .indef_map_start = on_indef, .map_start = on_map,
  .tag = on_tag,
  .float2 = on_f4, .float4 = on_f4, .float8 = on_f8,
  .undefined = on_null, .null = on_null, .boolean = on_bool,
  .indef_break = on_break,
};

/* A compound being filled: t owned, its items [0, at) set.  A record
** whose label is still to come has t NULL and `arity` fields to come. */
typedef struct Frame {
  mk_term *t;
  uint32_t at;
  uint32_t arity;
} Frame;

/* Frames kept in D itself: a topic on the wire is a few levels deep, and
** a malloc and free per decode cost as much as reading it.  Deeper terms
** move the stack to the heap (push). */
#define SMALLSTACK  8

/* The walk: the input, what is read of it, the stack of compounds being
** filled (small, or malloc'd and owned, with their terms), the nodes
** begun so far (no subterm is shared in what the decoder builds, so the
** size of the term when done), and the term once it is whole (owned). */
typedef struct D {
  const unsigned char *p;
  size_t len, pos;
  Frame *stack;
  Frame small[SMALLSTACK];
  size_t sp, cap;
  size_t nodes;
  size_t depthmax, sizemax;   /* the term limits, read once per decode */
  mk_term *root;
} D;

static const char OOM[] = "out of memory";
static const char TOO_DEEP[] = "a term nested deeper than the depth limit";
static const char TOO_BIG[] = "a term of more nodes than the size limit";

static const char TRUNCATED[] = "truncated CBOR";

/* The next head by libcbor. */
static const char *libcbor_next (D *d, Ev *ev) {
  struct cbor_decoder_result r = cbor_stream_decode(d->p + d->pos, d->len - d->pos,
                                                    &callbacks, ev);
  if (r.status == CBOR_DECODER_NEDATA) return TRUNCATED;
  if (r.status != CBOR_DECODER_FINISHED) return "malformed CBOR";
  d->pos += r.read;
  return NULL;
}

/* The n-byte big-endian number at p. */
static uint64_t be (const unsigned char *p, unsigned n) {
  uint64_t u = 0;
  while (n-- > 0) u = u << 8 | *p++;
  return u;
}

/* The next head into *ev, or a reason.  A head is an initial byte (major
** type in the top 3 bits, "additional information" ai in the low 5), then
** ai's argument: ai itself below 24, else the 1, 2, 4 or 8 bytes after
** (ai 24 to 27); a string's bytes follow its head. */
static const char *next (D *d, Ev *ev) {
  const unsigned char *p = d->p + d->pos;
  size_t left = d->len - d->pos, need;
  unsigned ib, ai;
  uint64_t u;
  if (MK_CBOR_LIBCBOR_HEADS || left == 0) return libcbor_next(d, ev);
  ib = p[0];
  ai = ib & 31;
  if (ib >= 0xe0) {               /* major type 7: simple values, floats */
    switch (ib) {
      case 0xf4: case 0xf5: ev->kind = EV_BOOL; ev->u = ib == 0xf5; break;
      case 0xf6: case 0xf7: ev->kind = EV_NULL; break;
      case 0xfa: case 0xfb: {
        unsigned n = ib == 0xfa ? 4 : 8;
        if (left < 1 + n) return TRUNCATED;
        u = be(p + 1, n);
        ev->kind = EV_FLOAT;
        if (n == 4) {
          uint32_t w = (uint32_t)u;
          float f;
          memcpy(&f, &w, sizeof f);
          ev->f = f;
        } else {
          memcpy(&ev->f, &u, sizeof ev->f);
        }
        d->pos += 1 + n;
        return NULL;
      }
      default: return libcbor_next(d, ev);
    }
    d->pos += 1;
    return NULL;
  }
  if (ai > 27) return libcbor_next(d, ev);   /* reserved, or indefinite */
  /* libcbor takes the one-byte tags 6 to 20 for malformed (unassigned in
  ** RFC 7049), where a tag written longer is just unknown: as it says */
  if (ib >= 0xc6 && ib <= 0xd4) return libcbor_next(d, ev);
  if (ai < 24) {
    u = ai;
    need = 1;
  } else {
    unsigned n = 1u << (ai - 24);
    if (left < 1 + (size_t)n) return TRUNCATED;
    u = be(p + 1, n);
    need = 1 + n;
  }
  switch (ib >> 5) {
    case 0: ev->kind = EV_UINT; break;
    case 1: ev->kind = EV_NEGINT; break;
    case 2: case 3:
      /* text strings too: market strings are bytes (on_str) */
      if (u > left - need) return TRUNCATED;
      ev->kind = EV_BYTES;
      ev->s = p + need;
      need += (size_t)u;
      break;
    case 4: ev->kind = EV_ARRAY; break;
    case 5: ev->kind = EV_MAP; break;
    default: ev->kind = EV_TAG; break;
  }
  ev->u = u;
  d->pos += need;
  return NULL;
}

/* One more node: within the size limit? */
static const char *count (D *d, uint64_t more) {
  if (more > d->sizemax - d->nodes) return TOO_BIG;
  d->nodes += (size_t)more;
  return NULL;
}

/* t (a new reference, NULL when memory ran out) is the next item: of the
** compound on top, or the whole term.  Compounds it completes are sealed
** and become items in turn. */
static const char *put (D *d, mk_term *t) {
  for (;;) {
    Frame *f;
    if (t == NULL) return OOM;
    if (d->sp == 0) {
      d->root = t;
      return NULL;
    }
    f = &d->stack[d->sp - 1];
    /* in place of mk_set: the slot holds the nil a new compound starts
    ** with, which needs no release, and f->at < n */
    mk_items(f->t)[f->at++] = t;
    if (f->at < f->t->n) return NULL;
    d->sp--;
    /* within the limits, as push and count made sure: NULL is memory */
    t = mk_seal(f->t);
  }
}

/* A compound of n items begins (for a record, n fields, and `arity` is
** n).  The depth limit bounds the stack: a compound inside sp others makes
** the whole term sp + 1 deep at least.  n is believed only if the input
** has a byte left for each item, and the size limit room for them, so
** that what is allocated for it is paid for by input. */
static const char *push (D *d, uint64_t n) {
  const char *err;
  if (d->sp + 1 > d->depthmax) return TOO_DEEP;
  if (n > d->len - d->pos) return TRUNCATED;
  if ((err = count(d, 1)) != NULL) return err;
  if (n > d->sizemax - d->nodes) return TOO_BIG;   /* before allocating */
  if (d->sp == d->cap) {
    size_t cap = d->cap * 2;
    Frame *s = realloc(d->stack == d->small ? NULL : d->stack, cap * sizeof *s);
    if (s == NULL) return OOM;
    if (d->stack == d->small) memcpy(s, d->small, sizeof d->small);
    d->stack = s;
    d->cap = cap;
  }
  d->stack[d->sp].t = NULL;
  d->stack[d->sp].at = 0;
  d->stack[d->sp].arity = (uint32_t)n;
  d->sp++;
  return NULL;
}

/* The label of the record on top has come: make the record. */
static const char *label (D *d, const Ev *ev) {
  Frame *f = &d->stack[d->sp - 1];
  mk_rtype *rt;
  mk_term *t;
  if (ev->kind != EV_BYTES) return "a record whose label is not a string";
  if (memchr(ev->s, '\0', (size_t)ev->u) != NULL) return "a record label holding a NUL byte";
  rt = mk_rtype_get((const char *)ev->s, (size_t)ev->u, f->arity, NULL);
  if (rt == NULL) return OOM;
  t = mk_rec_new(rt);
  mk_rtype_unref(rt);
  if (t == NULL) return OOM;
  if (f->arity > 0) {
    f->t = t;
    return NULL;
  }
  d->sp--;
  return put(d, mk_seal(t));
}

/* What the walk expects next, after a tag. */
enum { ANY, RECORD, WILD, END };

/* The wrapper as mk_cbor_encode writes it (the shortest heads): read as
** one comparison, where its three heads cost more than a small topic's. */
static const unsigned char WRAPPER[] = {
  MT_TAG | 26, (MK_CBOR_TAG_TERM >> 24) & 0xff, (MK_CBOR_TAG_TERM >> 16) & 0xff,
  (MK_CBOR_TAG_TERM >> 8) & 0xff, MK_CBOR_TAG_TERM & 0xff, MT_ARRAY | 2, MT_UINT | MK_CBOR_VERSION
};

static const char *walk (D *d) {
  int expect = ANY;
  Ev ev;
  const char *err;
  /* the wrapper: tag TERM, [version, term]; written otherwise (longer
  ** heads), or not at all, it is read head by head, as the fuzzer's
  ** reference reads it always */
  if (!MK_CBOR_LIBCBOR_HEADS && d->len >= sizeof WRAPPER &&
      memcmp(d->p, WRAPPER, sizeof WRAPPER) == 0) {
    d->pos = sizeof WRAPPER;
    goto items;
  }
  if ((err = next(d, &ev)) != NULL) return err;
  if (ev.kind != EV_TAG || ev.u != MK_CBOR_TAG_TERM) return "not a market term (no version tag)";
  if ((err = next(d, &ev)) != NULL) return err;
  if (ev.kind != EV_ARRAY || ev.u != 2) return "a version tag around something else than [version, term]";
  if ((err = next(d, &ev)) != NULL) return err;
  if (ev.kind != EV_UINT) return "a version that is not an unsigned integer";
  if (ev.u != MK_CBOR_VERSION) return "an unsupported version";
items:
  while (d->root == NULL) {
    if ((err = next(d, &ev)) != NULL) return err;
    if (d->sp > 0 && d->stack[d->sp - 1].t == NULL) {
      err = label(d, &ev);
    } else if (expect == RECORD) {
      if (ev.kind != EV_ARRAY || ev.u == 0) return "a record tag around something else than [label, field...]";
      err = push(d, ev.u - 1);      /* its fields: the label comes first (label) */
      expect = ANY;
    } else if (expect == WILD || expect == END) {
      if (ev.kind != EV_NULL) return "a wildcard or EOF tag around something else than null";
      err = put(d, expect == WILD ? mk_wild() : mk_eof());
      expect = ANY;
    } else {
      switch (ev.kind) {
        case EV_TAG:
          if (ev.u == MK_CBOR_TAG_RECORD) expect = RECORD;
          else if (ev.u == MK_CBOR_TAG_WILD) expect = WILD;
          else if (ev.u == MK_CBOR_TAG_EOF) expect = END;
          else return "an unknown tag";
          /* the tag's term counts when it begins (push, or the atom) */
          if (expect != RECORD) err = count(d, 1);
          break;
        case EV_ARRAY:
          if ((err = push(d, ev.u)) != NULL) break;
          if (ev.u == 0) {
            d->sp--;
            err = put(d, mk_seal(mk_seq_new(0)));
          } else {
            mk_term *t = mk_seq_new((uint32_t)ev.u);
            d->stack[d->sp - 1].t = t;
            if (t == NULL) {
              d->sp--;
              err = OOM;
            }
          }
          break;
        case EV_MAP: return "a map (no term is one)";
        case EV_INDEF: return "an indefinite length (terms are written with definite ones)";
        case EV_BREAK: return "malformed CBOR";
        case EV_UINT:
          if (ev.u > INT64_MAX) return "an integer beyond 64 bits signed";
          if ((err = count(d, 1)) == NULL) err = put(d, mk_int((int64_t)ev.u));
          break;
        case EV_NEGINT:
          if (ev.u > INT64_MAX) return "an integer beyond 64 bits signed";
          if ((err = count(d, 1)) == NULL) err = put(d, mk_int(-1 - (int64_t)ev.u));
          break;
        case EV_FLOAT:
          if ((err = count(d, 1)) == NULL) err = put(d, mk_float(ev.f));
          break;
        case EV_BYTES:
          if ((err = count(d, 1)) == NULL) err = put(d, mk_str((const char *)ev.s, (size_t)ev.u));
          break;
        case EV_NULL:
          if ((err = count(d, 1)) == NULL) err = put(d, mk_nil());
          break;
        case EV_BOOL:
          if ((err = count(d, 1)) == NULL) err = put(d, mk_bool((int)ev.u));
          break;
      }
    }
    if (err != NULL) return err;
  }
  if (d->pos != d->len) return "trailing bytes after the term";
  return NULL;
}

mk_term *mk_cbor_decode (const unsigned char *buf, size_t len, const char **why) {
  D d;
  const char *err;
  d.p = buf;
  d.len = buf == NULL ? 0 : len;
  d.pos = 0;
  d.stack = d.small;
  d.sp = 0;
  d.cap = SMALLSTACK;
  d.nodes = 0;
  d.depthmax = mk_term_depth_limit();
  d.sizemax = mk_term_size_limit();
  d.root = NULL;
  err = walk(&d);
  while (d.sp > 0) mk_unref(d.stack[--d.sp].t);
  if (d.stack != d.small) free(d.stack);
  if (err != NULL) {
    mk_unref(d.root);
    if (why != NULL) *why = err;
    return NULL;
  }
  return d.root;
}

/* }====================================================== */

/* ---- framing (cbor.h) ----------------------------------------------------- */

int mk_cbor_head(const unsigned char *d, size_t len, size_t *at, unsigned *mt, uint64_t *v) {
  size_t i = *at, h;
  unsigned ai;
  if (i >= len) return -1;
  *mt = d[i] >> 5;
  ai = d[i] & 31;
  if (ai < 24) {
    *v = ai;
    *at = i + 1;
    return 0;
  }
  if (ai > 27) return -1;
  h = (size_t)1 << (ai - 24);
  if (h >= len - i) return -1;
  for (*v = 0, i++; h > 0; h--, i++) *v = *v << 8 | d[i];
  *at = i;
  return 0;
}

/* No recursion: it counts the items still to be skipped, and believes an
** array's count only as far as the bytes go (each item is a byte at
** least). */
size_t mk_cbor_item_end(const unsigned char *d, size_t len, size_t at) {
  size_t pending = 1;
  unsigned mt;
  uint64_t v;
  while (pending-- > 0) {
    if (mk_cbor_head(d, len, &at, &mt, &v) != 0) return 0;
    switch (mt) {
      case 2: case 3:                        /* a string: its bytes */
      case 4:                                /* an array: its items */
        if (v > len - at) return 0;
        if (mt == 4) pending += (size_t)v;
        else at += (size_t)v;
        break;
      case 5:                                /* a map */
        return 0;
      case 6:                                /* a tag: the item it wraps */
        pending++;
        break;
      default:                               /* integers, simple values, floats */
        break;
    }
  }
  return at;
}

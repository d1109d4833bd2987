/*
** fuzz_route.c: libFuzzer target for the routing index (runtime/route.[ch]).
**
** The input is a sequence of operations on one index and a fixed set of
** items: add an item under a topic read from the input, remove it, match
** a query read from the input (checked against the naive matcher of
** spec/c/naive_index.h: every item whose topic unifies is reported exactly
** once, and no other), match and stop early, free the index with items
** still in it.  After a removal the trie must have as many nodes as a
** fresh one of the same topics.  Topics come from a small alphabet of atoms and record
** types, with wildcards, so that they collide, share prefixes and match
** often; some are wrapped a few hundred levels deep.  At the end every item
** is removed, the trie must be back to its root, and no term may be left.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "naive_index.h"
#include "route.h"

#define CHECK(e) do { if (!(e)) { \
  fprintf(stderr, "fuzz_route: %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #e); \
  abort(); } } while (0)

#define NITEMS    40
#define MAXDEPTH  5        /* of a topic read from the input */
#define MAXWRAP   300      /* levels a topic may be wrapped in */

typedef struct In { const uint8_t *p; size_t n; } In;

static unsigned byte (In *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}

static mk_rtype *rts[5];     /* p/0, p/2, q/1, q/3, r/2 */

static mk_term *term (In *in, int depth) {
  unsigned b = byte(in);
  switch (depth > 0 ? b % 16 : b % 9) {
    case 0: return mk_nil();
    case 1: return mk_bool(1);
    case 2: return mk_int(b >> 4 & 3);
    case 3: return mk_float(0.5);
    case 4: return mk_str("ab\0", b >> 4 & 3);
    case 5: return mk_eof();
    case 6: case 7: case 8: return mk_wild();
    default: {
      mk_term *t;
      uint32_t k;
      if (b % 16 < 13) t = mk_rec_new(rts[(b >> 4) % 5]);
      else t = mk_seq_new((b >> 4) % 4);
      CHECK(t != NULL);
      for (k = 0; k < t->n; k++) mk_set(t, k, term(in, depth - 1));
      t = mk_seal(t);
      CHECK(t != NULL);
      return t;
    }
  }
}

/* A topic or a query: a term, sometimes wrapped deep (a cons list whose
** items are wildcards or the term). */
static mk_term *topic (In *in) {
  unsigned how = byte(in);
  mk_term *t = term(in, 1 + how % MAXDEPTH);
  if (how >= 0xf0) {
    unsigned k, n = (byte(in) << 1) % MAXWRAP;
    for (k = 0; k < n; k++) {
      t = mk_rec(rts[4], (how ^ k) & 1 ? mk_wild() : mk_int(k % 3), t);
      CHECK(t != NULL);
    }
  }
  return t;
}

static void run (Cross *x, In *in) {
  while (in->n > 0) {
    unsigned op = byte(in) % 8, k = byte(in) % NITEMS;
    Item *it = &x->items[k];
    switch (op) {
      case 0: case 1:          /* add under a new topic */
        if (it->link.leaf == NULL) {
          mk_unref(it->topic);
          it->topic = topic(in);
          CHECK(mk_index_add(x->ix, it->topic, &it->link) == 0);
        }
        break;
      case 2: {                /* add under another item's topic, the same term */
        Item *other = &x->items[byte(in) % NITEMS];
        if (it->link.leaf == NULL && other->topic != NULL) {
          mk_term *t = mk_ref(other->topic);
          mk_unref(it->topic);
          it->topic = t;
          CHECK(mk_index_add(x->ix, it->topic, &it->link) == 0);
        }
        break;
      }
      case 3:                  /* remove (a no-op when not indexed); what
                               ** adds split, removal folds back */
        mk_index_remove(x->ix, &it->link);
        CHECK(it->link.leaf == NULL);
        CHECK(mk_index_nodes(x->ix) == fresh_nodes(x));
        break;
      case 4: case 5: {        /* match a query; 5: an item's topic again, the
                               ** same term, as a channel's sender repeats its
                               ** own (the index's match cache) */
        mk_term *q = op == 5 && it->topic != NULL ? mk_ref(it->topic) : topic(in);
        crosscheck(x, q);
        CHECK(x->ok);
        mk_unref(q);
        break;
      }
      case 6: {                /* match, stopping at the k-th report */
        mk_term *q = topic(in);
        Coll c;
        size_t want = 0, got;
        int i;
        for (i = 0; i < NITEMS; i++)
          want += x->items[i].link.leaf != NULL && mk_unifies(x->items[i].topic, q);
        c.calls = 0;
        c.stopat = (int)k + 1;
        got = mk_index_match(x->ix, q, collect, &c);
        CHECK(got == (want < k + 1 ? want : k + 1) && got == (size_t)c.calls);
        mk_unref(q);
        break;
      }
      default: {               /* free the index with the items still in it */
        size_t linked = 0;
        int i;
        for (i = 0; i < NITEMS; i++) linked += x->items[i].link.leaf != NULL;
        CHECK(mk_index_count(x->ix) == linked);
        mk_index_free(x->ix);
        for (i = 0; i < NITEMS; i++) CHECK(x->items[i].link.leaf == NULL);
        x->ix = mk_index_new();
        CHECK(x->ix != NULL);
      }
    }
  }
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  static Item items[NITEMS];
  size_t base = mk_term_live();
  Cross x;
  In in;
  int i;
  rts[0] = mk_rtype_get("p", 1, 0, NULL);
  rts[1] = mk_rtype_get("p", 1, 2, NULL);
  rts[2] = mk_rtype_get("q", 1, 1, NULL);
  rts[3] = mk_rtype_get("q", 1, 3, NULL);
  rts[4] = mk_rtype_get("r", 1, 2, NULL);
  memset(items, 0, sizeof items);
  for (i = 0; i < NITEMS; i++) items[i].id = i;
  memset(&x, 0, sizeof x);
  x.ix = mk_index_new();
  x.items = items;
  x.n = NITEMS;
  x.ok = 1;
  CHECK(x.ix != NULL);
  in.p = data;
  in.n = size;
  run(&x, &in);
  for (i = 0; i < NITEMS; i++) mk_index_remove(x.ix, &items[i].link);
  CHECK(mk_index_count(x.ix) == 0 && mk_index_nodes(x.ix) == 1);
  mk_index_free(x.ix);
  for (i = 0; i < NITEMS; i++) mk_unref(items[i].topic);
  for (i = 0; i < 5; i++) mk_rtype_unref(rts[i]);
  CHECK(mk_term_live() == base);
  return 0;
}

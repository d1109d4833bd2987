/*
** naive_index.h: items for the routing index and the naive matcher it is
** checked against, a linear scan with mk_unifies (static: include once per
** program).  Shared by spec/c/test_index.c and spec/fuzz/fuzz_route.c.
*/
#ifndef MK_NAIVE_INDEX_H
#define MK_NAIVE_INDEX_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "route.h"

typedef struct Item {
  mk_ilink link;
  mk_term *topic;
  int id;
  int seen;      /* times reported by the last match */
  int order;     /* position in the last match's report */
} Item;

#define ITEM(l)  ((Item *)(void *)((char *)(l) - offsetof(Item, link)))

typedef struct Coll {
  int calls;
  int stopat;    /* return nonzero on this call (1-based); 0: never */
} Coll;

static int collect (mk_ilink *l, void *ctx) {
  Coll *c = (Coll *)ctx;
  Item *it = ITEM(l);
  it->seen++;
  it->order = c->calls++;
  return c->stopat != 0 && c->calls == c->stopat;
}

/* A cross-check: an index, its items (each linked in it or not), and
** whether every match so far agreed with the linear scan. */
typedef struct Cross {
  mk_index *ix;
  Item *items;
  int n;
  int ok;
  long reported, checked;
  mk_match_slot *slot;   /* the sender's match slot (route.h), or NULL */
} Cross;

/* Compare one query's report with a linear scan. */
static void crosscheck (Cross *x, mk_term *q) {
  Coll c = { 0, 0 };
  size_t got;
  int i, want = 0;
  for (i = 0; i < x->n; i++) x->items[i].seen = 0;
  got = x->slot ? mk_index_match_slot(x->ix, x->slot, q, collect, &c)
                : mk_index_match(x->ix, q, collect, &c);
  for (i = 0; i < x->n; i++) {
    Item *it = &x->items[i];
    int u = it->link.leaf != NULL && mk_unifies(it->topic, q);
    want += u;
    if (it->seen != u) {
      char *a = mk_repr(it->topic, NULL), *b = mk_repr(q, NULL);
      if (x->ok) fprintf(stderr, "  topic %s query %s: seen %d times, unifies %d\n",
                         a, b, it->seen, u);
      free(a); free(b);
      x->ok = 0;
    }
  }
  if (got != (size_t)want || c.calls != want) x->ok = 0;
  x->reported += want;
  x->checked++;
}

/* The nodes of a fresh index holding the topics of x's linked items,
** added last first: the routing trie's shape depends on its set of
** topics only (route.c, "Leaves and their tails"), so it must equal
** x->ix's. */
static size_t fresh_nodes (const Cross *x) {
  mk_index *ix = mk_index_new();
  mk_ilink *links = (mk_ilink *)calloc((size_t)x->n, sizeof *links);
  size_t nodes;
  int i;
  for (i = x->n - 1; i >= 0; i--)
    if (x->items[i].link.leaf != NULL) mk_index_add(ix, x->items[i].topic, &links[i]);
  nodes = mk_index_nodes(ix);
  mk_index_free(ix);
  free(links);
  return nodes;
}

#endif

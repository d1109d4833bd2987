/*
** route.c: the routing index, a trie over the preorder token sequence of
** topics (see route.h).
**
** A topic such as  f(1, [_, "x"])  reads in preorder as the tokens
**   f/2  1  seq/2  _  "x"
** where an atom is its own token, a compound contributes a header (the
** record type, or the sequence length) that opens `arity` more terms, and
** a wildcard is the special token that every node keeps apart, in its
** `wild` child.  Since every topic is one complete term, the token strings
** of topics are prefix-free: items live only on the nodes where a
** complete term ends.
**
** Matching walks the trie alongside the query's own preorder.  The state
** is (node, i, skip): the trie node reached, the position i of the next
** query subterm, and how many complete topic terms must still be skipped
** because a query wildcard covers them.  Each trie path is aligned with
** the query in exactly one way, so each leaf (hence each item) is reached
** at most once, and it is reached exactly when its topic unifies.
*/

#include <stdlib.h>
#include <string.h>

#include "route.h"


/* token tags */
#define TK_ROOT  0
#define TK_WILD  1
#define TK_ATOM  2
#define TK_REC   3
#define TK_SEQ   4

/* A node keeps at most this many children in a plain array; above that,
** an open-addressing hash table of a power-of-2 size. */
#define SMALLKIDS  8
#define MINTABLE   16

struct mk_inode {
  mk_inode *parent;
  mk_inode *wild;           /* child for a wildcard at this position */
  mk_inode **kids;          /* the other children (see SMALLKIDS) */
  uint32_t nkids;           /* number of children in kids */
  uint32_t kcap;            /* <= SMALLKIDS: array; else table size */
  mk_ilink *head, *tail;    /* items whose topic ends here */
  /* the token leading here from the parent */
  uint32_t khash;
  uint32_t arity;           /* number of terms the token opens */
  uint8_t tag;
  union {
    mk_term *atom;          /* TK_ATOM: owned reference */
    mk_rtype *rt;           /* TK_REC: owned reference */
  } key;
};

/* one subterm of a flattened term: `size` is its preorder token count,
** which is its mk_term_size (term.h, "Size") */
typedef struct QEnt {
  const mk_term *t;
  uint32_t size;
} QEnt;

/* a pending walk state */
typedef struct Task {
  mk_inode *node;
  uint32_t i;               /* next query subterm */
  uint32_t skip;            /* topic terms still to skip */
} Task;

/* growable work areas, kept between calls so a match does not allocate */
typedef struct Scratch {
  QEnt *q;                  /* flattened term */
  size_t qcap;
  const mk_term **s;        /* stack for flattening */
  size_t scap;
  Task *w;                  /* walk stack */
  size_t wcap;
} Scratch;

struct mk_index {
  mk_inode *root;
  size_t count;             /* items */
  size_t nodes;             /* trie nodes, root included */
  int busy;                 /* a match is running (its scratch is in use) */
  Scratch sc;
};


/*
** {======================================================
** Scratch areas
** =======================================================
*/

/* Ensure *p (of *cap elements of `size` bytes) holds at least `need`. */
static int grow (void **p, size_t *cap, size_t need, size_t size) {
  size_t ncap;
  void *np;
  if (need <= *cap) return 0;
  ncap = *cap ? *cap : 32;
  while (ncap < need) {
    if (ncap > SIZE_MAX / 2) return -1;
    ncap *= 2;
  }
  if (ncap > SIZE_MAX / size) return -1;
  np = realloc(*p, ncap * size);
  if (np == NULL) return -1;
  *p = np;
  *cap = ncap;
  return 0;
}

#define GROW(sc,f,cap,need)  grow((void **)&(sc)->f, &(sc)->cap, (need), sizeof(*(sc)->f))

static void freescratch (Scratch *sc) {
  free(sc->q);
  free(sc->s);
  free(sc->w);
  memset(sc, 0, sizeof(*sc));
}

/*
** Flatten t into sc->q in preorder, with subtree sizes.  Returns the
** number of entries, mk_term_size(t), or 0 on allocation failure.  A term
** that shares subterms is flattened as the tree it stands for; the size
** limit of terms (term.h) is what bounds it.
*/
static size_t flatten (Scratch *sc, const mk_term *t) {
  size_t nq = 0, ns = 0;
  if (GROW(sc, s, scap, 1) != 0) return 0;
  sc->s[ns++] = t;
  while (ns > 0) {
    t = sc->s[--ns];
    if (GROW(sc, q, qcap, nq + 1) != 0) return 0;
    sc->q[nq].t = t;
    sc->q[nq++].size = (uint32_t)mk_term_size(t);  /* below 2^32 (term.h) */
    if (t->kind == MK_REC || t->kind == MK_SEQ) {
      uint32_t k = t->n;
      if (GROW(sc, s, scap, ns + k) != 0) return 0;
      while (k > 0) sc->s[ns++] = mk_items(t)[--k];  /* first item on top */
    }
  }
  return nq;
}

/* }====================================================== */


/*
** {======================================================
** Tokens and the child map of a node
** =======================================================
*/

static int tokentag (const mk_term *t) {
  switch (t->kind) {
    case MK_WILD: return TK_WILD;
    case MK_REC: return TK_REC;
    case MK_SEQ: return TK_SEQ;
    default: return TK_ATOM;
  }
}

/* headers hash their record type or length; remixed to spread the bits */
static uint32_t tokenhash (const mk_term *t) {
  uint32_t h;
  switch (t->kind) {
    case MK_REC: h = t->v.rt->hash ^ 0x7feb352du; break;
    case MK_SEQ: h = t->n ^ 0x846ca68bu; break;
    default: return t->hash;  /* already well mixed */
  }
  h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
  return h;
}

static int samekey (const mk_inode *c, int tag, uint32_t h, const mk_term *t) {
  if (c->khash != h || c->tag != tag) return 0;
  switch (tag) {
    case TK_REC: return c->key.rt == t->v.rt;
    case TK_SEQ: return c->arity == t->n;
    default: return mk_equal(c->key.atom, t);
  }
}

static mk_inode *findkid (const mk_inode *n, int tag, uint32_t h,
                          const mk_term *t) {
  if (n->kcap <= SMALLKIDS) {
    uint32_t i;
    for (i = 0; i < n->nkids; i++)
      if (samekey(n->kids[i], tag, h, t)) return n->kids[i];
  }
  else {
    uint32_t mask = n->kcap - 1, i;
    mk_inode *c;
    for (i = h & mask; (c = n->kids[i]) != NULL; i = (i + 1) & mask)
      if (samekey(c, tag, h, t)) return c;
  }
  return NULL;
}

static void tableput (mk_inode **tab, uint32_t cap, mk_inode *c) {
  uint32_t i = c->khash & (cap - 1);
  while (tab[i] != NULL) i = (i + 1) & (cap - 1);
  tab[i] = c;
}

/* Rebuild n's map with capacity ncap (<= SMALLKIDS means a plain array). */
static int rehash (mk_inode *n, uint32_t ncap) {
  mk_inode **nk = (mk_inode **)calloc(ncap, sizeof(mk_inode *));
  uint32_t i, j = 0;
  if (nk == NULL) return -1;
  if (n->kcap <= SMALLKIDS) {
    for (i = 0; i < n->nkids; i++) tableput(nk, ncap, n->kids[i]);
  }
  else {
    for (i = 0; i < n->kcap; i++) {
      if (n->kids[i] == NULL) continue;
      if (ncap <= SMALLKIDS) nk[j++] = n->kids[i];
      else tableput(nk, ncap, n->kids[i]);
    }
  }
  free(n->kids);
  n->kids = nk;
  n->kcap = ncap;
  return 0;
}

static int addkid (mk_inode *n, mk_inode *c) {
  if (n->kcap <= SMALLKIDS) {
    if (n->nkids == n->kcap) {
      if (n->kcap < SMALLKIDS) {
        uint32_t ncap = n->kcap ? n->kcap * 2 : 2;
        mk_inode **nk = (mk_inode **)realloc(n->kids, ncap * sizeof(mk_inode *));
        if (nk == NULL) return -1;
        n->kids = nk;
        n->kcap = ncap;
      }
      else if (rehash(n, MINTABLE) != 0) return -1;
    }
  }
  else if ((n->nkids + 1) * 4 > n->kcap * 3) {  /* keep the load <= 3/4 */
    if (n->kcap > UINT32_MAX / 2 || rehash(n, n->kcap * 2) != 0) return -1;
  }
  if (n->kcap <= SMALLKIDS) n->kids[n->nkids] = c;
  else tableput(n->kids, n->kcap, c);
  n->nkids++;
  return 0;
}

static void removekid (mk_inode *n, mk_inode *c) {
  uint32_t i;
  if (n->kcap <= SMALLKIDS) {  /* order among children does not matter */
    for (i = 0; n->kids[i] != c; i++)
      ;
    n->kids[i] = n->kids[--n->nkids];
  }
  else {
    /* linear probing: delete by shifting later entries back into the hole */
    uint32_t mask = n->kcap - 1, j;
    for (i = c->khash & mask; n->kids[i] != c; i = (i + 1) & mask)
      ;
    for (j = (i + 1) & mask; n->kids[j] != NULL; j = (j + 1) & mask) {
      uint32_t home = n->kids[j]->khash & mask;
      /* move j into the hole i unless its home lies cyclically in (i, j] */
      if (((j - home) & mask) >= ((j - i) & mask)) {
        n->kids[i] = n->kids[j];
        n->kids[j] = NULL;
        i = j;
      }
    }
    n->kids[i] = NULL;
    n->nkids--;
    /* shrink (best effort) when sparse */
    if (n->nkids <= SMALLKIDS / 2) rehash(n, SMALLKIDS);
    else if (n->kcap > MINTABLE && n->nkids * 8 < n->kcap) rehash(n, n->kcap / 2);
  }
}

/*
** Detach and return some child of n, or NULL; used only when freeing,
** so it may turn a table into a plain array with holes.
*/
static mk_inode *popkid (mk_inode *n) {
  if (n->kcap > SMALLKIDS) {
    n->nkids = n->kcap;
    n->kcap = SMALLKIDS;
  }
  while (n->nkids > 0) {
    mk_inode *c = n->kids[--n->nkids];
    if (c != NULL) return c;
  }
  return NULL;
}

/* }====================================================== */


/*
** {======================================================
** Nodes
** =======================================================
*/

static mk_inode *newnode (mk_index *ix, mk_inode *parent) {
  mk_inode *n = (mk_inode *)calloc(1, sizeof(mk_inode));
  if (n == NULL) return NULL;
  n->parent = parent;
  n->tag = TK_ROOT;
  ix->nodes++;
  return n;
}

static void freenode (mk_index *ix, mk_inode *n) {
  if (n->tag == TK_ATOM) mk_unref(n->key.atom);
  else if (n->tag == TK_REC) mk_rtype_unref(n->key.rt);
  free(n->kids);
  free(n);
  ix->nodes--;
}

/* The child of n for the token of t, created if need be; NULL on failure. */
static mk_inode *child (mk_index *ix, mk_inode *n, const mk_term *t) {
  int tag = tokentag(t);
  uint32_t h;
  mk_inode *c;
  if (tag == TK_WILD) {
    if (n->wild == NULL && (n->wild = newnode(ix, n)) != NULL)
      n->wild->tag = TK_WILD;
    return n->wild;
  }
  h = tokenhash(t);
  if ((c = findkid(n, tag, h, t)) != NULL) return c;
  if ((c = newnode(ix, n)) == NULL) return NULL;
  c->tag = (uint8_t)tag;
  c->khash = h;
  if (addkid(n, c) != 0) {
    freenode(ix, c);
    return NULL;
  }
  switch (tag) {
    case TK_REC:
      c->arity = t->n;
      c->key.rt = t->v.rt;
      mk_rtype_ref(c->key.rt);
      break;
    case TK_SEQ:
      c->arity = t->n;
      break;
    default:
      c->key.atom = mk_ref((mk_term *)t);  /* immutable; only the count changes */
  }
  return c;
}

/* Free n and its ancestors while they hold nothing. */
static void prune (mk_index *ix, mk_inode *n) {
  while (n != ix->root && n->head == NULL && n->wild == NULL && n->nkids == 0) {
    mk_inode *p = n->parent;
    if (p->wild == n) p->wild = NULL;
    else removekid(p, n);
    freenode(ix, n);
    n = p;
  }
}

/* }====================================================== */


/*
** {======================================================
** The interface
** =======================================================
*/

mk_index *mk_index_new (void) {
  mk_index *ix = (mk_index *)calloc(1, sizeof(mk_index));
  if (ix == NULL) return NULL;
  if ((ix->root = newnode(ix, NULL)) == NULL) {
    free(ix);
    return NULL;
  }
  return ix;
}

/* Depth first through parent pointers: no stack needed. */
void mk_index_free (mk_index *ix) {
  mk_inode *n;
  if (ix == NULL) return;
  n = ix->root;
  while (n != NULL) {
    mk_inode *c = n->wild;
    if (c != NULL) n->wild = NULL;
    else c = popkid(n);
    if (c != NULL) {
      n = c;
      continue;
    }
    while (n->head != NULL) {
      mk_ilink *l = n->head;
      n->head = l->next;
      l->prev = l->next = NULL;
      l->leaf = NULL;
    }
    c = n->parent;
    freenode(ix, n);
    n = c;
  }
  freescratch(&ix->sc);
  free(ix);
}

/* An item belongs to at most one index: adding a linked item moves it. */
int mk_index_add (mk_index *ix, const mk_term *topic, mk_ilink *item) {
  Scratch *sc = &ix->sc;
  mk_inode *n = ix->root;
  size_t nq, i;
  if (ix->busy) return -1;  /* from a match callback: the walk owns the scratch */
  if (item->leaf != NULL) mk_index_remove(ix, item);
  if ((nq = flatten(sc, topic)) == 0) return -1;
  for (i = 0; i < nq; i++) {
    mk_inode *c = child(ix, n, sc->q[i].t);
    if (c == NULL) {
      prune(ix, n);  /* drop what this call created */
      return -1;
    }
    n = c;
  }
  item->leaf = n;
  item->next = NULL;
  item->prev = n->tail;
  if (n->tail) n->tail->next = item;
  else n->head = item;
  n->tail = item;
  ix->count++;
  return 0;
}

void mk_index_remove (mk_index *ix, mk_ilink *item) {
  mk_inode *n = item->leaf;
  if (n == NULL) return;
  if (item->prev) item->prev->next = item->next;
  else n->head = item->next;
  if (item->next) item->next->prev = item->prev;
  else n->tail = item->prev;
  item->prev = item->next = NULL;
  item->leaf = NULL;
  ix->count--;
  prune(ix, n);
}

static int push (Scratch *sc, size_t *nw, mk_inode *n, size_t i, uint32_t skip) {
  if (GROW(sc, w, wcap, *nw + 1) != 0) return -1;
  sc->w[*nw].node = n;
  sc->w[*nw].i = (uint32_t)i;
  sc->w[*nw].skip = skip;
  (*nw)++;
  return 0;
}

/* Push every child of n (not the wild one) as consuming one term more. */
static int pushkids (Scratch *sc, size_t *nw, const mk_inode *n, size_t i,
                     uint32_t skip) {
  uint32_t k, len = (n->kcap <= SMALLKIDS) ? n->nkids : n->kcap;
  for (k = 0; k < len; k++) {
    mk_inode *c = n->kids[k];
    if (c != NULL && push(sc, nw, c, i, skip + c->arity) != 0) return -1;
  }
  return 0;
}

/*
** The walk.  The ground path of the query is followed directly; only the
** alternatives (wild children, subtrees covered by query wildcards) go on
** the work stack.  Allocation fails only when a stack must grow; the walk
** then ends early, having reported what it had found.
*/
static size_t walk (Scratch *sc, mk_inode *root, size_t nq, mk_match_fn fn,
                    void *ctx) {
  size_t count = 0, nw = 0;
  if (push(sc, &nw, root, 0, 0) != 0) return 0;
  while (nw > 0) {
    Task tk = sc->w[--nw];
    mk_inode *n = tk.node;
    size_t i = tk.i;
    if (tk.skip > 0) {  /* consume one complete topic term from n */
      if (n->wild && push(sc, &nw, n->wild, i, tk.skip - 1) != 0) return count;
      if (pushkids(sc, &nw, n, i, tk.skip - 1) != 0) return count;
      continue;
    }
    for (;;) {
      const QEnt *q;
      mk_inode *c;
      if (i == nq) {  /* query used up: a complete topic ends here */
        mk_ilink *l = n->head;
        while (l != NULL) {
          mk_ilink *next = l->next;
          count++;
          if (fn(l, ctx)) return count;
          l = next;
        }
        break;
      }
      q = &sc->q[i];
      if (q->t->kind == MK_WILD) {  /* every topic term fits here */
        if (n->wild && push(sc, &nw, n->wild, i + 1, 0) != 0) return count;
        if (pushkids(sc, &nw, n, i + 1, 0) != 0) return count;
        break;
      }
      /* Under a topic wildcard there are often no other children. */
      c = n->nkids ? findkid(n, tokentag(q->t), tokenhash(q->t), q->t) : NULL;
      if (n->wild != NULL) {  /* a topic wildcard takes the whole subterm */
        if (c == NULL) {
          n = n->wild;
          i += q->size;
          continue;
        }
        if (push(sc, &nw, n->wild, i + q->size, 0) != 0) return count;
      }
      if (c == NULL) break;
      n = c;
      i++;  /* past an atom, or into a compound's first item */
    }
  }
  return count;
}

size_t mk_index_match (mk_index *ix, const mk_term *query, mk_match_fn fn,
                       void *ctx) {
  Scratch local = { NULL, 0, NULL, 0, NULL, 0 };
  Scratch *sc = &ix->sc;
  size_t nq, count = 0;
  int nested = ix->busy;
  if (nested) sc = &local;  /* a match from inside a callback */
  ix->busy = 1;
  if ((nq = flatten(sc, query)) != 0)
    count = walk(sc, ix->root, nq, fn, ctx);
  ix->busy = nested;
  if (nested) freescratch(&local);
  return count;
}

size_t mk_index_count (const mk_index *ix) {
  return ix->count;
}

size_t mk_index_nodes (const mk_index *ix) {
  return ix->nodes;
}

/* }====================================================== */

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
**
** A node with no children but the wildcard one does not look at the query
** term in front of it: the walk takes the wildcard branch past the whole
** subterm, whatever it is.  That is what the match cache (below) rests
** on: a channel's messages differ only in their payload, which the walk
** steps over without reading.
**
** Leaves and their tails.  A node that holds items has no children (the
** token strings are prefix-free), and it keeps a reference to its first
** item's topic.  The tokens of that topic from the node's depth on (its
** *tail*) are not nodes of their own: the trie branches only where two
** topics differ, and a topic's unshared rest is one node, however long
** (a connection's channel topics share everything up to the remote port
** and nothing after it, issue 10).  Adding a topic that differs from a
** leaf's inside its tail turns the tokens they share into nodes and
** parts the two there (split); removing a topic folds a chain left with
** a single leaf back into it (foldup), so the shape of the trie depends
** only on the set of topics in it.  The walk matches a tail against the
** query term by term (tailmatch): from any depth on, a topic's tokens are
** those of a run of complete subterms, which is what mk_unifies compares.
** A leaf does not store its depth, where its tail starts: the walk counts
** the depth of the node it is at, and the depth of each node it stacks.
*/

#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "route.h"


/* token tags */
#define TK_ROOT  0
#define TK_WILD  1
#define TK_ATOM  2
#define TK_REC   3
#define TK_SEQ   4

/* A node keeps at most this many children in a plain array; above that,
** an open-addressing hash table of a power-of-2 size.  A single child is
** kept in the node itself: most nodes are links in one topic's chain (the
** rest of a connection's topic after its port, say), and an array of its
** own cost each of those a second allocation (issue 10). */
#define SMALLKIDS  8
#define MINTABLE   16
#define NTABLESIZE 33           /* klog values: 0 .. 32 */
#define TOMBMAX    UINT16_MAX   /* ntomb's bound (removekid) */

/* 56 bytes, a 64-byte malloc chunk: an idle connection's topics hold
** several nodes of their own (issue 10).  Hence the capacity kept as a
** logarithm, the item list without a tail pointer, and a leaf's topic in
** the place of the children it cannot have. */
struct mk_inode {
  mk_inode *parent;
  mk_inode *wild;           /* child for a wildcard at this position */
  union {
    mk_inode **v;           /* kcap >= 2: owned array or table */
    mk_inode *one;          /* kcap == 1: the child, in place */
    mk_term *topic;         /* kcap == 0: NULL, or, on a leaf (a node with
                            ** items), the topic of its first item, an owned
                            ** reference; see leaftopic */
  } kids;                   /* the other children (see SMALLKIDS; kidv) */
  mk_ilink *head;           /* items whose topic ends here; head->prev is
                            ** the last of them (route.h) */
  union {
    mk_term *atom;          /* TK_ATOM: owned reference, but on a leaf
                            ** borrowed from its topic (see freenode) */
    mk_rtype *rt;           /* TK_REC: owned reference */
  } key;                    /* the token leading here from the parent ... */
  uint32_t khash;           /* ... its hash ... */
  uint32_t arity;           /* ... and the number of terms it opens */
  uint32_t nkids;           /* number of children in kids */
  uint8_t tag;
  uint8_t klog;             /* kcap (kcapof): 0, or 2^(klog-1); a power of 2 */
  uint16_t ntomb;           /* slots of a hash table holding TOMB (removekid) */
};
_Static_assert(sizeof(struct mk_inode) <= 56, "a trie node fits a 64-byte malloc chunk");

/*
** The match cache.  A query whose top level is a record or a sequence of
** at most CK_ITEMS items, and whose walk reported at most CK_RES items,
** is remembered under its header and the top-level items the walk read
** (its *key*; the items it stepped over are not part of it).  A later
** query with the same header and equal items in those places takes the
** same path through an unchanged trie, so it has the same matches, in
** the same order: the cache answers it without flattening or walking.
** An entry holds the generation of its header's bucket (one of CK_NGEN),
** which every add or remove of a topic that could unify with a query of
** that header bumps (see changed): that voids at once all the entries
** it could make wrong, and no others.  Which items a header's walks read
** (its `mask`) is kept per header in a small table of hints, so that a
** lookup knows what to hash; a hint that is wrong only costs a miss,
** since an entry matches only under the mask it was stored with.
*/
#define CK_ITEMS   MK_SLOT_ITEMS   /* tcp, udp and timer records have 2 or 3 */
#define CK_RES     MK_SLOT_RES
#define CK_NSHAPE  32       /* hints: headers in use at once */
#define CK_MIN     64       /* entries; grows with the keys in use ... */
#define CK_MAX     65536    /* ... up to this, 4 MiB */
#define CK_KEYMAX  512      /* the weight of a key's items (see light) */
#define CK_EVICT   4        /* a full pair takes one new key in this many */
#define CK_NGEN    64       /* generations: buckets of headers (see changed) */

/* 64 bytes, one cache line, and the table aligned to it: a lookup reads
** one line, or the two of its pair, adjacent (at 1,000 connections and
** more the table is out of the cache, and an entry over two lines cost a
** miss more per message, issue 10).  Hence the generation in 32 bits
** (see changed) and the header's arity and the mask in bytes. */
typedef mk_match_entry CEntry;   /* route.h */
_Static_assert(sizeof(CEntry) == 64, "a cache entry is one cache line");
#define CK_LINE    64

typedef struct CShape {     /* a hint, keeps no reference */
  uint32_t gen;
  const mk_rtype *rt;
  uint32_t n, mask;
} CShape;

typedef struct Cache {
  CEntry *e;                /* owned, cap entries, NULL until first needed */
  size_t cap;
  size_t evicted;           /* stores that found their pair full since the
                            ** table grew (see store) */
  CShape shape[CK_NSHAPE];
} Cache;

/* What a walk learns for the cache: which top-level items it read (item
** k occupies flattened positions start[k] .. start[k+1]-1) and the first
** CK_RES matches. */
typedef struct Track {
  uint32_t start[CK_ITEMS + 1];
  uint32_t nk;
  uint32_t read;            /* bit k: the walk read a token of item k */
  size_t nres;              /* matches reported */
  mk_ilink *res[CK_RES];
  int done;                 /* the walk ran to its end */
} Track;

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
  uint32_t depth;           /* tokens from the root to node (term.h's size
                            ** limit keeps it below 2^25) */
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
  uint32_t gen[CK_NGEN];    /* per bucket of headers, bumped by the adds
                            ** and removes that can change their matches
                            ** (match cache; see changed) */
  uint32_t wraps;           /* times a gen wrapped (match slots: route.h) */
  Scratch sc;
  Cache cache;
  /* Child tables given up (by a rehash or a freed node), at most one per
  ** size, by klog; owned.  A wave of processes that each add a topic
  ** under one node (other(pid, _, _)) and then die grows that node's
  ** table from MINTABLE to its peak and shrinks it again: with a fresh
  ** calloc for every size on the way, the large requests made glibc
  ** consolidate its free lists over and over, about 3% of a spawn's
  ** instructions (issue 10).  Reused, they cost a memset.  At most
  ** twice the largest table the index ever had is kept, until
  ** mk_index_free. */
  mk_inode **spare[NTABLESIZE];
};

static void clearcache (Cache *c);

static uint32_t tokenhash (const mk_term *t);

/* The bucket of generations of a header (hash hh, its tokenhash). */
static uint32_t genof (uint32_t hh) {
  return hh >> (32 - 6);   /* the high bits: the hints take the low ones */
}
_Static_assert(CK_NGEN == 1 << 6, "genof takes 6 bits");

/* A generation has 32 bits (CEntry); when one wraps, every entry and
** hint is cleared, so that none made 2^32 changes ago can look current,
** and the count of wraps voids the senders' slots (route.h), which the
** index cannot reach. */
static void wrapped (mk_index *ix, uint32_t b) {
  ix->wraps++;
  clearcache(&ix->cache);
  memset(ix->cache.shape, 0, sizeof ix->cache.shape);
  ix->gen[b] = 1;
}

/* Bucket b's generation moves on. */
static void bump (mk_index *ix, uint32_t b) {
  if (++ix->gen[b] == 0) wrapped(ix, b);
}

/*
** The trie changed by an item of this topic: the cache entries and hints
** its add or remove can make wrong are void.  A topic unifies only with
** terms of its own kind or a wildcard (mk_unifies), and the cache holds
** queries headed by a record or a sequence only: a topic headed by a
** record type, or a sequence of a length, can change the matches of
** the queries with that header only, the bucket of its header's hash; a
** wildcard topic those of any query, every bucket; a scalar topic none.
** (An echo server's idle alarms, a timer's subscription each, re-armed
** 33 times a second at 10,000 connections, do not void the channels'
** entries; with one generation for all, they voided every entry and
** slot, issue 10.)  A query's walk visits the root's child of its
** header and the root's wildcard branch only, and a topic of another
** header changes neither (the root is never folded: foldup), so the
** walk an entry stands for is still the walk the query would take.
*/
static void changed (mk_index *ix, const mk_term *topic) {
  uint32_t b;
  if (topic->kind == MK_REC || topic->kind == MK_SEQ) bump(ix, genof(tokenhash(topic)));
  else if (topic->kind == MK_WILD)
    for (b = 0; b < CK_NGEN; b++) bump(ix, b);
}


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
** limit of terms (term.h) is what bounds it.  The size of t bounds both
** the entries and the stack (whose terms are disjoint subtrees not yet
** visited), so both grow once, before the loop.
*/
static size_t flatten (Scratch *sc, const mk_term *t) {
  size_t nq = 0, ns = 0, total = mk_term_size(t);
  if (GROW(sc, q, qcap, total) != 0 || GROW(sc, s, scap, total) != 0) return 0;
  sc->s[ns++] = t;
  while (ns > 0) {
    t = sc->s[--ns];
    sc->q[nq].t = t;
    if (t->kind == MK_REC || t->kind == MK_SEQ) {
      uint32_t k = t->n;
      sc->q[nq].size = (uint32_t)mk_term_size(t);  /* below 2^32 (term.h) */
      while (k > 0) sc->s[ns++] = mk_items(t)[--k];  /* first item on top */
    }
    else sc->q[nq].size = 1;
    nq++;
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

/* A term's hash (mk_hash), without the call when it has one already. */
static inline uint32_t thash (const mk_term *t) {
  return __builtin_expect(t->hash != 0, 1) ? t->hash : mk_hash(t);
}

/* headers hash their record type or length; remixed to spread the bits */
static uint32_t tokenhash (const mk_term *t) {
  uint32_t h;
  switch (t->kind) {
    case MK_REC: h = t->v.rt->hash ^ 0x7feb352du; break;
    case MK_SEQ: h = t->n ^ 0x846ca68bu; break;
    default: return thash(t);  /* already well mixed */
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

/* The capacity of n's children: <= SMALLKIDS, an array; else a table's
** size. */
static uint32_t kcapof (const mk_inode *n) {
  return n->klog ? (uint32_t)1 << (n->klog - 1) : 0;
}

/* The klog of a capacity (see kcapof). */
static uint8_t klogof (uint32_t cap) {
  uint8_t k = 0;
  while (cap != 0) { k++; cap >>= 1; }
  return k;
}

static void setkcap (mk_inode *n, uint32_t cap) {
  n->klog = klogof(cap);
}

/* The children of n as an array of kcap entries. */
static mk_inode **kidv (const mk_inode *n) {
  return n->klog == 1 ? (mk_inode **)&n->kids.one : n->kids.v;
}

/* The topic of a leaf, NULL for any other node: a node with children
** (its kcap above 0, or only a wild one) has no topic, and a node with
** items has no children. */
static mk_term *leaftopic (const mk_inode *n) {
  return n->klog == 0 ? n->kids.topic : NULL;
}

/*
** A hash table's slot whose child went (removekid): probes go on past it,
** as past a child, and an insertion may take it.  Its tag, TK_ROOT, is no
** child's, so samekey never takes it for one.  A deletion that moved the
** later children of its run back into the hole (linear probing's usual
** way) read each of them, a cache miss apiece in a table of one child per
** process: a wave of kills, or 10,000 processes killed one after the
** other, paid one or two per kill (issue 10).  The tombs go when the
** table is rebuilt (rehash: it grows or shrinks, or tombs and children
** fill three quarters of it), and those a free slot follows at once.
*/
static mk_inode tomb;
#define TOMB (&tomb)

/*
** A hash table of cap slots is one block: cap child pointers, then cap
** slot marks (slotsof), each 0 for a free slot, SLOT_TOMB for a tomb, or
** the child's slothash.  A probe reads the marks, sixteen to a cache line,
** and looks at a child only when its mark is the hash sought: reading each
** child of the run to compare its khash cost a cache miss a probe in a
** table of one child per process, about eight for an insertion at three
** quarters' load, once for the insertion and once for the presence walk
** of every spawn (issue 10).  A child's home slot is its slothash modulo
** the size.
*/
#define SLOT_TOMB  1u

/* The mark of a child whose khash is h: 2 or more. */
static inline uint32_t slothash (uint32_t h) {
  return h >= 2 ? h : h + 2;
}

/* The marks of a table of cap slots. */
static inline uint32_t *slotsof (mk_inode **tab, uint32_t cap) {
  return (uint32_t *)(tab + cap);
}

/* A table's slot: its child pointer and its mark. */
#define SLOTBYTES (sizeof(mk_inode *) + sizeof(uint32_t))

static mk_inode *findkid (const mk_inode *n, int tag, uint32_t h,
                          const mk_term *t) {
  if (kcapof(n) <= SMALLKIDS) {
    mk_inode **k = kidv(n);
    uint32_t i;
    for (i = 0; i < n->nkids; i++)
      if (samekey(k[i], tag, h, t)) return k[i];
  }
  else {
    uint32_t mask = kcapof(n) - 1, sh = slothash(h), i;
    const uint32_t *marks = slotsof(n->kids.v, kcapof(n));
    for (i = sh & mask; marks[i] != 0; i = (i + 1) & mask)
      if (marks[i] == sh && samekey(n->kids.v[i], tag, h, t))
        return n->kids.v[i];
  }
  return NULL;
}

/* c, whose mark is sh, into the first free slot or tomb of its probe: 1
** when that was a tomb (a rebuilt table has none).  findkid found no child
** equal to c. */
static int tableput (mk_inode **tab, uint32_t cap, mk_inode *c, uint32_t sh) {
  uint32_t *marks = slotsof(tab, cap), i = sh & (cap - 1);
  int was_tomb;
  while (marks[i] > SLOT_TOMB) i = (i + 1) & (cap - 1);
  was_tomb = marks[i] == SLOT_TOMB;
  tab[i] = c;
  marks[i] = sh;
  return was_tomb;
}

/* A zeroed child map of ncap entries: a hash table (ncap > SMALLKIDS),
** with its marks, comes from the spares when there is one of that size. */
static mk_inode **newtable (mk_index *ix, uint32_t ncap) {
  mk_inode **t;
  if (ncap <= SMALLKIDS) return (mk_inode **)calloc(ncap, sizeof(mk_inode *));
  if ((t = ix->spare[klogof(ncap)]) != NULL) {
    ix->spare[klogof(ncap)] = NULL;
    memset(t, 0, (size_t)ncap * SLOTBYTES);
    return t;
  }
  return (mk_inode **)calloc(ncap, SLOTBYTES);
}

/* Give up n's child map (kept as a spare when it is a hash table and
** there is none of its size). */
static void freetable (mk_index *ix, mk_inode *n) {
  if (kcapof(n) > SMALLKIDS && ix->spare[n->klog] == NULL) ix->spare[n->klog] = n->kids.v;
  else if (kcapof(n) > 1) free(n->kids.v);
}

/* Rebuild n's map with capacity ncap (<= SMALLKIDS means a plain array):
** a table's children move by their marks, none of them read. */
static int rehash (mk_index *ix, mk_inode *n, uint32_t ncap) {
  mk_inode **nk = newtable(ix, ncap), **old = kidv(n);
  uint32_t i, j = 0;
  if (nk == NULL) return -1;
  if (kcapof(n) <= SMALLKIDS) {
    for (i = 0; i < n->nkids; i++) tableput(nk, ncap, old[i], slothash(old[i]->khash));
  }
  else {
    const uint32_t *marks = slotsof(old, kcapof(n));
    for (i = 0; i < kcapof(n); i++) {
      if (marks[i] <= SLOT_TOMB) continue;
      if (ncap <= SMALLKIDS) nk[j++] = old[i];
      else tableput(nk, ncap, old[i], marks[i]);
    }
  }
  freetable(ix, n);
  n->kids.v = nk;
  setkcap(n, ncap);
  n->ntomb = 0;
  return 0;
}

static int addkid (mk_index *ix, mk_inode *n, mk_inode *c) {
  if (kcapof(n) <= SMALLKIDS) {
    if (n->nkids == kcapof(n)) {
      if (n->klog == 0) setkcap(n, 1);   /* in place */
      else if (kcapof(n) < SMALLKIDS) {
        uint32_t ncap = kcapof(n) * 2;
        mk_inode **nk = (mk_inode **)realloc(kcapof(n) == 1 ? NULL : n->kids.v,
                                             ncap * sizeof(mk_inode *));
        if (nk == NULL) return -1;
        if (kcapof(n) == 1) nk[0] = n->kids.one;
        n->kids.v = nk;
        setkcap(n, ncap);
      }
      else if (rehash(ix, n, MINTABLE) != 0) return -1;
    }
  }
  else if ((n->nkids + n->ntomb + 1) * 4 > kcapof(n) * 3) {  /* keep the load <= 3/4 */
    /* Rebuilt without its tombs: twice the size when the children alone
    ** would fill half of it (always, when there are no tombs), so that
    ** a table rebuilt for its tombs has room for a quarter of its size
    ** before the next rebuild. */
    uint32_t ncap = (n->nkids + 1) * 2 > kcapof(n) ? kcapof(n) * 2 : kcapof(n);
    if (kcapof(n) > UINT32_MAX / 2 || rehash(ix, n, ncap) != 0) return -1;
  }
  if (kcapof(n) <= SMALLKIDS) kidv(n)[n->nkids] = c;
  else if (tableput(n->kids.v, kcapof(n), c, slothash(c->khash))) n->ntomb--;
  n->nkids++;
  return 0;
}

static void removekid (mk_index *ix, mk_inode *n, mk_inode *c) {
  uint32_t i;
  if (kcapof(n) <= SMALLKIDS) {  /* order among children does not matter */
    mk_inode **k = kidv(n);
    for (i = 0; k[i] != c; i++)
      ;
    k[i] = k[--n->nkids];
  }
  else {
    mk_inode **k = n->kids.v;
    uint32_t *marks = slotsof(k, kcapof(n)), mask = kcapof(n) - 1, sh = slothash(c->khash), j;
    /* c is sought by its pointer, and the slot after it read there too: a
    ** wave of kills reaches the table at random, and the marks cost a
    ** second line only written (a slot's pointer is NULL, TOMB or a child
    ** as its mark is 0, SLOT_TOMB or the child's slothash). */
    for (i = sh & mask; k[i] != c; i = (i + 1) & mask)
      ;
    if (k[(i + 1) & mask] == NULL) {
      /* No probe needs the slot, nor the tombs right before it. */
      k[i] = NULL;
      marks[i] = 0;
      while (marks[i = (i - 1) & mask] == SLOT_TOMB) {
        k[i] = NULL;
        marks[i] = 0;
        n->ntomb--;
      }
    }
    else if (n->ntomb < TOMBMAX) {
      k[i] = TOMB;   /* the children after it are not read (see TOMB) */
      marks[i] = SLOT_TOMB;
      n->ntomb++;
    }
    else {
      /* As many tombs as ntomb counts: the later entries of the run are
      ** shifted back into the hole, unless an entry's home lies
      ** cyclically in (i, j].  A tomb reads as homed at slot 0, and
      ** moves or stays as that says: no probe needs it where it is. */
      for (j = (i + 1) & mask; marks[j] != 0; j = (j + 1) & mask) {
        uint32_t home = marks[j] == SLOT_TOMB ? 0 : marks[j] & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
          k[i] = k[j];
          marks[i] = marks[j];
          k[j] = NULL;
          marks[j] = 0;
          i = j;
        }
      }
      k[i] = NULL;
      marks[i] = 0;
    }
    n->nkids--;
    /* shrink (best effort) when sparse */
    if (n->nkids <= SMALLKIDS / 2) rehash(ix, n, SMALLKIDS);
    else if (kcapof(n) > MINTABLE && n->nkids * 8 < kcapof(n)) rehash(ix, n, kcapof(n) / 2);
  }
}

/*
** Detach and return some child of n, or NULL; used only when freeing,
** so it may turn a table into a plain array with holes.
*/
static mk_inode *popkid (mk_inode *n) {
  if (kcapof(n) > SMALLKIDS) {
    n->nkids = kcapof(n);
    setkcap(n, SMALLKIDS);
  }
  while (n->nkids > 0) {
    mk_inode *c = kidv(n)[--n->nkids];
    if (c != NULL && c != TOMB) return c;
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
  /* From the small-block cache (pool.h), as the VM's process and
  ** endpoint records: a topic's nodes come and go with its process. */
  mk_inode *n = (mk_inode *)mk_pool_alloc(sizeof(mk_inode));
  if (n == NULL) return NULL;
  memset(n, 0, sizeof *n);
  n->parent = parent;
  n->tag = TK_ROOT;
  ix->nodes++;
  return n;
}

/*
** A leaf's atom key is a subterm of its topic, which the leaf holds: it
** borrows it (lend) rather than hold a reference of its own, so that a
** leaf that goes does not touch the atom.  A wave of processes killed
** one after the other, each with its own pid in its topic, read each pid
** again only to drop that reference: a cache miss per kill (issue 10).
** A node that stops being a leaf takes a reference (split, foldup); one
** that becomes a leaf gives it back, once its key is its topic's own.
*/
static void lend (mk_inode *n) {
  if (n->tag == TK_ATOM) mk_unref(n->key.atom);   /* the topic holds it */
}

static void own (mk_inode *n) {
  if (n->tag == TK_ATOM) mk_ref(n->key.atom);
}

static inline void freenode (mk_index *ix, mk_inode *n) {
  if (n->tag == TK_ATOM) {
    if (leaftopic(n) == NULL) mk_unref(n->key.atom);
  }
  else if (n->tag == TK_REC) mk_rtype_unref(n->key.rt);
  mk_unref(leaftopic(n));
  freetable(ix, n);
  mk_pool_free(n, sizeof *n);
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
  if (addkid(ix, n, c) != 0) {
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

/* Free n and its ancestors while they hold nothing; returns the first
** node that stays. */
static mk_inode *prune (mk_index *ix, mk_inode *n) {
  while (n != ix->root && n->head == NULL && n->wild == NULL && n->nkids == 0) {
    mk_inode *p = n->parent;
    if (p->wild == n) p->wild = NULL;
    else removekid(ix, p, n);
    freenode(ix, n);
    n = p;
  }
  return n;
}

/*
** The subterm of t at preorder position d (below mk_term_size(t)).  It
** also pushes onto s[*ns ...] the complete subterms that follow that one
** in t's preorder, the nearest last: popping them yields the rest of t's
** tokens, term by term.  They are disjoint subterms after position d, so
** there are fewer than mk_term_size(t) - d of them.  With s NULL, it
** only finds the subterm.
*/
static const mk_term *locate (const mk_term *t, size_t d, const mk_term **s,
                              size_t *ns) {
  size_t pos = 0;
  while (pos < d) {  /* d lies inside compound t, past its header */
    mk_term *const *it = mk_items(t);
    uint32_t k = 0, j;
    pos++;
    while (pos + mk_term_size(it[k]) <= d) pos += mk_term_size(it[k++]);
    if (s != NULL)
      for (j = t->n; j > k + 1; j--) s[(*ns)++] = it[j - 1];
    t = it[k];
  }
  return t;
}

/* Do a and b (subterms) open with the same token? */
static int sametoken (const mk_term *a, const mk_term *b) {
  int tag = tokentag(a);
  if (tag != tokentag(b)) return 0;
  switch (tag) {
    case TK_WILD: return 1;
    case TK_REC: return a->v.rt == b->v.rt;  /* interned with the arity */
    case TK_SEQ: return a->n == b->n;
    default: return mk_equal(a, b);
  }
}

/*
** *np is a leaf at depth *ip, and the scratch holds a flattened topic
** with the same first *ip tokens.  Returns 1 when the two topics are equal.
** Otherwise the leaf's tail becomes nodes down to the first token p where
** the topics differ, the leaf's items go to a new leaf made of its token
** there, and *np, *ip become the node at depth p and p: 0.  -1 on
** allocation failure, the leaf as it was.  The items move once, whatever
** the length of the common run.
*/
static int split (mk_index *ix, mk_inode **np, size_t *ip) {
  Scratch *sc = &ix->sc;
  mk_inode *n = *np, *m = n, *c;
  mk_term *topic = n->kids.topic;
  mk_ilink *head = n->head, *l;
  const mk_term *t;
  size_t i = *ip, p = i, ns = 0;
  if (i == mk_term_size(topic)) return 1;  /* both end here */
  if (GROW(sc, s, scap, mk_term_size(topic) - i) != 0) return -1;
  t = locate(topic, i, sc->s, &ns);  /* flatten's stack is free again */
  while (sametoken(t, sc->q[p].t)) {
    uint32_t k;
    if (t->kind == MK_REC || t->kind == MK_SEQ)
      for (k = t->n; k > 0; k--) sc->s[ns++] = mk_items(t)[k - 1];
    p++;
    if (ns == 0) return 1;  /* equal tokens, equal structure: both end here */
    t = sc->s[--ns];
  }
  n->kids.topic = NULL;  /* the child map takes its place */
  own(n);
  for (; i < p; i++) {   /* equal tokens: the new topic's stand for both */
    if ((c = child(ix, m, sc->q[i].t)) == NULL) goto fail;
    m = c;
  }
  if ((c = child(ix, m, t)) == NULL) goto fail;
  n->head = NULL;
  c->kids.topic = topic;
  lend(c);               /* made of topic's own token */
  c->head = head;
  for (l = head; l != NULL; l = l->next) l->leaf = c;
  *np = m;
  *ip = p;
  return 0;
fail:
  prune(ix, m);  /* up to n, which still holds its items */
  freetable(ix, n);
  n->klog = 0;
  n->ntomb = 0;
  n->kids.topic = topic;
  lend(n);
  return -1;
}

/* The only child of n (wild or not), or NULL when it has none or more. */
static mk_inode *onlykid (const mk_inode *n) {
  uint32_t i;
  if (n->wild != NULL) return n->nkids == 0 ? n->wild : NULL;
  if (n->nkids != 1) return NULL;
  if (kcapof(n) <= SMALLKIDS) return kidv(n)[0];
  for (i = 0; n->kids.v[i] == NULL || n->kids.v[i] == TOMB; i++)  /* a table that could not shrink */
    ;
  return n->kids.v[i];
}

/*
** Undo split above n: when n's only child is a leaf, the highest node of
** the chain of only children that ends there becomes that leaf, and the
** nodes below it go.  The items move once.
*/
static void foldup (mk_index *ix, mk_inode *n) {
  mk_inode *leaf, *c, *m;
  mk_ilink *l;
  size_t d = 0;
  if (n == ix->root || (leaf = onlykid(n)) == NULL || leaftopic(leaf) == NULL)
    return;
  while (n->parent != ix->root && onlykid(n->parent) == n) n = n->parent;
  c = onlykid(n);
  n->wild = NULL;
  freetable(ix, n);
  n->klog = 0;
  n->nkids = 0;
  n->ntomb = 0;
  n->kids.topic = leaf->kids.topic;
  own(leaf);             /* freed below as a node without a topic */
  leaf->kids.topic = NULL;
  if (n->tag == TK_ATOM) {
    /* n's key becomes the topic's own token there, at n's depth less one
    ** (the root's children have the first): an equal atom, which the
    ** path to n spells for every topic under it. */
    mk_term *mine = n->key.atom;
    for (m = n; m != ix->root; m = m->parent) d++;
    n->key.atom = (mk_term *)locate(n->kids.topic, d - 1, NULL, NULL);
    mk_unref(mine);
  }
  n->head = leaf->head;
  leaf->head = NULL;
  for (l = n->head; l != NULL; l = l->next) l->leaf = n;
  while (c != NULL) {  /* the chain, its maps freed with its nodes */
    mk_inode *next = c == leaf ? NULL : onlykid(c);
    freenode(ix, c);
    c = next;
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
  int i;
  if (ix == NULL) return NULL;
  if ((ix->root = newnode(ix, NULL)) == NULL) {
    free(ix);
    return NULL;
  }
  for (i = 0; i < CK_NGEN; i++) ix->gen[i] = 1;  /* 0 marks an empty cache entry */
  return ix;
}

/* Depth first through parent pointers: no stack needed. */
void mk_index_free (mk_index *ix) {
  mk_inode *n;
  int i;
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
  clearcache(&ix->cache);
  free(ix->cache.e);
  for (i = 0; i < NTABLESIZE; i++) free(ix->spare[i]);
  free(ix);
}

/*
** An item belongs to at most one index: adding a linked item moves it.
** The descent stops at a leaf of an equal topic, or at a child it had to
** make, which becomes a leaf with the rest of the topic as its tail.  A
** leaf on the way whose topic differs is split where the two part, and
** the descent goes on from there.
*/
int mk_index_add (mk_index *ix, const mk_term *topic, mk_ilink *item) {
  Scratch *sc = &ix->sc;
  mk_inode *n = ix->root;
  size_t i = 0;
  if (ix->busy) return -1;  /* from a match callback: the walk owns the scratch */
  if (item->leaf != NULL) mk_index_remove(ix, item);
  if (flatten(sc, topic) == 0) return -1;
  for (;;) {
    mk_inode *c;
    if (leaftopic(n) != NULL) {
      int r = split(ix, &n, &i);
      if (r > 0) break;
      if (r < 0) goto fail;
    }
    if ((c = child(ix, n, sc->q[i++].t)) == NULL) goto fail;
    n = c;
    if (n->klog == 0 && n->kids.topic == NULL && n->wild == NULL) {  /* new */
      n->kids.topic = mk_ref((mk_term *)topic);  /* immutable */
      lend(n);                                   /* made of topic's token */
      break;
    }
  }
  item->leaf = n;
  item->next = NULL;
  if (n->head == NULL) n->head = item->prev = item;
  else {
    mk_ilink *last = n->head->prev;
    last->next = item;
    item->prev = last;
    n->head->prev = item;
  }
  ix->count++;
  changed(ix, topic);
  return 0;
fail:  /* drop what this call made, and fold what it pushed down */
  changed(ix, topic);
  foldup(ix, prune(ix, n));
  return -1;
}

void mk_index_remove (mk_index *ix, mk_ilink *item) {
  mk_inode *n = item->leaf;
  if (n == NULL) return;
  changed(ix, leaftopic(n));  /* the leaf's topic is equal to the item's */
  if (item == n->head) {
    n->head = item->next;
    if (n->head) n->head->prev = item->prev;
  } else {
    item->prev->next = item->next;
    if (item->next) item->next->prev = item->prev;
    else n->head->prev = item->prev;
  }
  item->prev = item->next = NULL;
  item->leaf = NULL;
  ix->count--;
  /* An empty index matches nothing: let go of the terms the cache holds. */
  if (ix->count == 0) clearcache(&ix->cache);
  if (n->head == NULL) {  /* the leaf goes: its parent may be left with one child */
    mk_inode *p = prune(ix, n);
    if (p->nkids + (p->wild != NULL) == 1) foldup(ix, p);
  }
}

static int push (Scratch *sc, size_t *nw, mk_inode *n, size_t i, uint32_t skip,
                 size_t depth) {
  if (GROW(sc, w, wcap, *nw + 1) != 0) return -1;
  sc->w[*nw].node = n;
  sc->w[*nw].i = (uint32_t)i;
  sc->w[*nw].skip = skip;
  sc->w[*nw].depth = (uint32_t)depth;
  (*nw)++;
  return 0;
}

/* Push every child of n (not the wild one; n at depth d) as consuming one
** term more. */
static int pushkids (Scratch *sc, size_t *nw, const mk_inode *n, size_t i,
                     uint32_t skip, size_t d) {
  uint32_t k, len = (kcapof(n) <= SMALLKIDS) ? n->nkids : kcapof(n);
  mk_inode **kids = kidv(n);
  for (k = 0; k < len; k++) {
    mk_inode *c = kids[k];
    if (c != NULL && c != TOMB && push(sc, nw, c, i, skip + c->arity, d + 1) != 0) return -1;
  }
  return 0;
}

/* The walk read query position i: mark the top-level item it lies in
** (position 0, the header, is always part of a cache key). */
static void readat (Track *tr, size_t i) {
  uint32_t k = tr->nk;
  while (k > 0 && tr->start[k - 1] > i) k--;
  if (k > 0) tr->read |= 1u << (k - 1);
}

/*
** Does the tail of leaf n, at depth d, unify with the query from position
** i on, once `skip` complete terms of it are skipped?  The tail is a run of complete
** subterms of n's topic, each one a whole query subterm in the walk's
** alignment.  A topic wildcard does not read the query (see the walk).
** 1 or 0; -1 when the stack cannot grow.
*/
static int tailmatch (Scratch *sc, const mk_inode *n, size_t d, size_t i,
                      size_t nq, uint32_t skip, Track *tr) {
  const mk_term *topic = n->kids.topic, *t;
  size_t ns = 0;
  if (d == mk_term_size(topic)) return 0;  /* no tail: the walk saw i < nq */
  if (GROW(sc, s, scap, mk_term_size(topic) - d) != 0) return -1;
  t = locate(topic, d, sc->s, &ns);  /* flatten's stack is free again */
  for (;;) {
    if (skip > 0) skip--;
    else {
      if (i == nq) return 0;
      if (t->kind != MK_WILD) {
        if (tr != NULL) readat(tr, i);
        if (!mk_unifies(t, sc->q[i].t)) return 0;
      }
      i += sc->q[i].size;
    }
    if (ns == 0) return i == nq;
    t = sc->s[--ns];
  }
}

/*
** The walk.  The ground path of the query is followed directly; only the
** alternatives (wild children, subtrees covered by query wildcards) go on
** the work stack.  Allocation fails only when a stack must grow; the walk
** then ends early, having reported what it had found.  With `tr`, it
** notes for the cache what it read and what it found.  A leaf's tail is
** matched in one step, after which the query is used up.
*/
static size_t walk (Scratch *sc, mk_inode *root, size_t nq, mk_match_fn fn,
                    void *ctx, Track *tr) {
  size_t count = 0, nw = 0;
  if (push(sc, &nw, root, 0, 0, 0) != 0) return 0;
  while (nw > 0) {
    Task tk = sc->w[--nw];
    mk_inode *n = tk.node;
    size_t i = tk.i, d = tk.depth;
    if (tk.skip > 0) {  /* consume one complete topic term from n */
      if (leaftopic(n) != NULL) {
        int r = tailmatch(sc, n, d, i, nq, tk.skip, tr);
        if (r < 0) return count;
        if (r == 0) continue;
        i = nq;
      }
      else {
        if (n->wild && push(sc, &nw, n->wild, i, tk.skip - 1, d + 1) != 0) return count;
        if (pushkids(sc, &nw, n, i, tk.skip - 1, d) != 0) return count;
        continue;
      }
    }
    for (;;) {
      const QEnt *q;
      mk_inode *c;
      if (i == nq) {  /* query used up: a complete topic ends here */
        mk_ilink *l = n->head;
        while (l != NULL) {
          mk_ilink *next = l->next;
          if (tr != NULL && count < CK_RES) tr->res[count] = l;
          count++;
          if (fn(l, ctx)) return count;
          l = next;
        }
        break;
      }
      if (n->nkids == 0) {  /* a topic wildcard or nothing: whatever the
                            ** query holds here, it is not read */
        if (n->wild == NULL) {  /* a leaf (or the empty root) */
          int r;
          if (leaftopic(n) == NULL) break;
          if ((r = tailmatch(sc, n, d, i, nq, 0, tr)) < 0) return count;
          if (r == 0) break;
          i = nq;
          continue;
        }
        n = n->wild;
        d++;
        i += sc->q[i].size;
        continue;
      }
      if (tr != NULL) readat(tr, i);
      q = &sc->q[i];
      if (q->t->kind == MK_WILD) {  /* every topic term fits here */
        if (n->wild && push(sc, &nw, n->wild, i + 1, 0, d + 1) != 0) return count;
        if (pushkids(sc, &nw, n, i + 1, 0, d) != 0) return count;
        break;
      }
      c = findkid(n, tokentag(q->t), tokenhash(q->t), q->t);
      if (n->wild != NULL) {  /* a topic wildcard takes the whole subterm */
        if (c == NULL) {
          n = n->wild;
          d++;
          i += q->size;
          continue;
        }
        if (push(sc, &nw, n->wild, i + q->size, 0, d + 1) != 0) return count;
      }
      if (c == NULL) break;
      n = c;
      d++;
      i++;  /* past an atom, or into a compound's first item */
    }
  }
  if (tr != NULL) {
    tr->nres = count;
    tr->done = 1;
  }
  return count;
}

/* }====================================================== */


/*
** {======================================================
** The match cache (see Cache above)
** =======================================================
*/

static uint32_t mix (uint32_t h, uint32_t x) {
  h = (h ^ x) * 0x9e3779b1u;
  return h ^ (h >> 15);
}

/* match and lookup are inlined into each caller of match, so that
** mk_index_match, without a slot, runs what it did before slots (a call
** more and the tests of the slot were 10 instructions of a Lua-to-Lua
** message, bench-callgrind); entryfor into its three callers (called,
** with the bucket's generation as an argument, a message cost 7
** instructions more than with one generation per index; inlined, 17
** fewer); keyhash into its two (once terms' hashes were computed when
** asked for, the compiler left it out of line: 22 instructions more). */
#if defined(__GNUC__)
#define MATCH_INLINE inline __attribute__((always_inline))
#else
#define MATCH_INLINE inline
#endif

/* The slot hash of query q (header hash hh) keyed under mask. */
static MATCH_INLINE uint32_t keyhash (const mk_term *q, uint32_t hh, uint32_t mask) {
  uint32_t k;
  for (k = 0; mask != 0; k++, mask >>= 1)
    if (mask & 1) hh = mix(hh, thash(mk_items(q)[k]));
  return hh;
}

static const mk_rtype *headrt (const mk_term *q) {
  return q->kind == MK_REC ? q->v.rt : NULL;
}

/* The items a header's walks have read since its bucket last changed
** (its generation now gen). */
static uint32_t hint (const mk_index *ix, const mk_term *q, uint32_t hh, uint32_t gen) {
  const CShape *sh = &ix->cache.shape[hh & (CK_NSHAPE - 1)];
  return sh->gen == gen && sh->rt == headrt(q) && sh->n == q->n ? sh->mask : 0;
}

static void clearentry (CEntry *e) {
  uint32_t k;
  if (e->gen == 0) return;
  if (e->rt != NULL) mk_rtype_unref(e->rt);
  for (k = 0; k < CK_ITEMS; k++) mk_unref(e->key[k]);
  memset(e, 0, sizeof(*e));
}

/* Drop every entry (and the terms they hold); the table stays. */
static void clearcache (Cache *c) {
  size_t i;
  for (i = 0; i < c->cap; i++) clearentry(&c->e[i]);
}

/* Is e an entry of the current trie?  (An empty one's gen, 0, never is.) */
static int live (const mk_index *ix, const CEntry *e) {
  return e->gen == ix->gen[e->bucket];
}

/* Is e the entry for q under mask, gen the generation of q's bucket?  (The
** callers have it at hand, the table's from the hint, a slot's from its
** bucket.) */
static MATCH_INLINE int entryfor (const CEntry *e, const mk_term *q, uint32_t mask,
                                   uint32_t gen) {
  uint32_t k;
  if (e->gen != gen || e->rt != headrt(q) || e->n != q->n || e->mask != mask)
    return 0;
  /* The pointer first, without a call: a channel's sender passes the
  ** same terms each time (a connection's addresses).  mk_equal then tries
  ** the hash before the values.  The items no walk read (often all of
  ** them) are not visited. */
  for (k = 0; mask != 0; k++, mask >>= 1) {
    const mk_term *t = mk_items(q)[k];
    if ((mask & 1) && e->key[k] != t && !mk_equal(e->key[k], t)) return 0;
  }
  return 1;
}

/* The table is two-way associative: a key lives in slot h or h ^ 1. */
static MATCH_INLINE CEntry *lookup (mk_index *ix, const mk_term *q, uint32_t hh,
                                    uint32_t mask, uint32_t gen) {
  Cache *c = &ix->cache;
  size_t i;
  if (c->e == NULL) return NULL;
  i = keyhash(q, hh, mask) & (c->cap - 1);
  if (entryfor(&c->e[i], q, mask, gen)) return &c->e[i];
  if (entryfor(&c->e[i ^ 1], q, mask, gen)) return &c->e[i ^ 1];
  return NULL;
}

/* Make the table, or grow it when its keys do not fit: when stores have
** found their pair full (see store) half its size times, while it is
** below CK_MAX and below four entries per indexed item (an index of n
** endpoints seldom has more than n keys in use, and a two-way table much
** fuller than a quarter collides often).  A table that grows starts
** empty.  0, or -1 when there is no table (out of memory: the cache is
** then simply not used). */
static int sizecache (mk_index *ix) {
  Cache *c = &ix->cache;
  size_t want = c->cap * 2;
  CEntry *ne;
  if (c->e == NULL) want = CK_MIN;
  else if (c->evicted < c->cap / 2 || want > CK_MAX || c->cap / 4 >= ix->count) return 0;
  ne = (CEntry *)aligned_alloc(CK_LINE, want * sizeof(CEntry));
  if (ne == NULL) return c->e ? 0 : -1;
  memset(ne, 0, want * sizeof(CEntry));
  clearcache(c);
  free(c->e);
  c->e = ne;
  c->cap = want;
  c->evicted = 0;
  return 0;
}

/* Does t weigh at most *left (16 a node, and a string its bytes too)?
** Takes its weight off *left; stops as soon as the answer is no.  The
** cache keeps its keys alive, so it takes only light ones: a message
** whose read items are large is walked each time rather than held.  The
** recursion is as deep as t, below CK_KEYMAX / 16 levels. */
static int light (const mk_term *t, size_t *left) {
  size_t w = 16 + (t->kind == MK_STR ? t->n : 0);
  uint32_t i;
  if (w > *left) return 0;
  *left -= w;
  if (t->kind == MK_REC || t->kind == MK_SEQ)
    for (i = 0; i < t->n; i++)
      if (!light(mk_items(t)[i], left)) return 0;
  return 1;
}

/* Make e the entry for q (its header in bucket b) under mask, with these
** matches (nres of them, at most CK_RES); what it held before is let go. */
static void fill (const mk_index *ix, CEntry *e, const mk_term *q, uint32_t b,
                  uint32_t mask, size_t nres, mk_ilink *const *res) {
  uint32_t k;
  clearentry(e);
  e->gen = ix->gen[b];
  e->bucket = (uint8_t)b;
  e->rt = q->kind == MK_REC ? q->v.rt : NULL;
  if (e->rt != NULL) mk_rtype_ref(e->rt);
  e->n = (uint8_t)q->n;
  e->mask = (uint8_t)mask;
  for (k = 0; k < q->n; k++)
    if ((mask >> k) & 1) e->key[k] = mk_ref(mk_items(q)[k]);
  e->nres = (uint8_t)nres;
  for (k = 0; k < nres; k++) e->res[k] = res[k];
}

/* Fill the sender's slot (route.h) for q under mask, unless it holds a
** current answer that was given within the last MK_SLOT_MISSES looks
** (each look that did not take it counted here): refilling costs a clear
** and a fill, with their references, which a sender taking turns between
** topics would pay at every send. */
static void fillslot (const mk_index *ix, mk_match_slot *s, const mk_term *q, uint32_t b,
                      uint32_t mask, size_t nres, mk_ilink *const *res) {
  if (s->wraps == ix->wraps && live(ix, &s->e) && ++s->misses < MK_SLOT_MISSES) return;
  fill(ix, &s->e, q, b, mask, nres, res);
  s->wraps = ix->wraps;
  s->misses = 0;
}

/* Remember what a complete walk of q found, keyed under `mask`, the hint
** it was looked up with plus what it read, in the table and in the
** sender's slot if it has one. */
static void store (mk_index *ix, const mk_term *q, uint32_t hh, uint32_t mask,
                   const Track *tr, mk_match_slot *slot) {
  Cache *c = &ix->cache;
  CShape *sh = &c->shape[hh & (CK_NSHAPE - 1)];
  CEntry *e;
  size_t left = CK_KEYMAX, i;
  uint32_t k, b = genof(hh);
  sh->gen = ix->gen[b];
  sh->rt = headrt(q);
  sh->n = q->n;
  sh->mask = mask;
  if (tr->nres > CK_RES) return;
  for (k = 0; k < q->n; k++)
    if (((mask >> k) & 1) && !light(mk_items(q)[k], &left)) return;
  if (slot != NULL) fillslot(ix, slot, q, b, mask, tr->nres, tr->res);
  if (sizecache(ix) != 0) return;
  /* The new entry takes a free slot of its pair, the first if both are.
  ** When both hold live entries, three keys or more share the pair: were
  ** each new one to push the older out, keys used in turn (a server's
  ** connections, a key or two each) would push each other out for ever
  ** and none would hit.  So a full pair mostly keeps what it has, two of
  ** its keys hitting, and one store in CK_EVICT replaces its second
  ** entry, so that keys gone out of use do not hold it until the trie
  ** changes.  (With the keys spread at random, 30,000 of them in
  ** CK_MAX entries, 10,000 connections' worth: about 23% of the lookups
  ** missed with the older pushed out, about a tenth so; issue 10.) */
  i = keyhash(q, hh, mask) & (c->cap - 1);
  e = &c->e[i];
  if (live(ix, e)) {
    e = &c->e[i ^ 1];
    if (live(ix, e) && c->evicted++ % CK_EVICT != 0) return;
  }
  fill(ix, e, q, b, mask, tr->nres, tr->res);
}

/* A walk of q that tells the cache what it read. */
static void starttrack (Track *tr, const mk_term *q) {
  uint32_t k;
  tr->nk = q->n;
  tr->start[0] = 1;
  for (k = 0; k < q->n; k++)
    tr->start[k + 1] = tr->start[k] + (uint32_t)mk_term_size(mk_items(q)[k]);
  tr->read = 0;
  tr->nres = 0;
  tr->done = 0;
}

/* }====================================================== */


/*
** {======================================================
** Matching
** =======================================================
*/

/* Call fn for e's matches, as a walk would. */
static size_t answer (mk_index *ix, const CEntry *e, mk_match_fn fn, void *ctx) {
  size_t count = 0;
  uint32_t k;
  ix->busy = 1;
  for (k = 0; k < e->nres; k++) {
    count++;
    if (fn(e->res[k], ctx)) break;
  }
  ix->busy = 0;
  return count;
}

/* mk_index_match, and with a slot mk_index_match_slot.  A slot is
** checked under the mask it was filled with, whatever the header's hint
** says now: equal items there take the walk it stands for. */
static MATCH_INLINE size_t match (mk_index *ix, const mk_term *query, mk_match_fn fn,
                                  void *ctx, mk_match_slot *slot) {
  Track tr, *trp = NULL;
  uint32_t hh = 0, mask = 0;
  size_t nq, count = 0;
  /* From inside a callback, the cache is neither read nor written (the
  ** outer match may be reading an entry), nor the index's scratch. */
  if (ix->busy) {
    Scratch local = { NULL, 0, NULL, 0, NULL, 0 };
    if ((nq = flatten(&local, query)) != 0)
      count = walk(&local, ix->root, nq, fn, ctx, NULL);
    freescratch(&local);
    return count;
  }
  if ((query->kind == MK_REC || query->kind == MK_SEQ) && query->n <= CK_ITEMS) {
    const CEntry *e;
    uint32_t b;
    if (slot != NULL && slot->wraps == ix->wraps &&
        entryfor(&slot->e, query, slot->e.mask, ix->gen[slot->e.bucket])) {
      if (slot->misses != 0) slot->misses = 0;     /* (a store only then) */
      return answer(ix, &slot->e, fn, ctx);
    }
    hh = tokenhash(query);
    b = genof(hh);
    mask = hint(ix, query, hh, ix->gen[b]);
    if ((e = lookup(ix, query, hh, mask, ix->gen[b])) != NULL) {
      if (slot != NULL) fillslot(ix, slot, query, b, e->mask, e->nres, e->res);
      return answer(ix, e, fn, ctx);
    }
    starttrack(&tr, query);
    trp = &tr;
  }
  ix->busy = 1;
  if ((nq = flatten(&ix->sc, query)) != 0)
    count = walk(&ix->sc, ix->root, nq, fn, ctx, trp);
  ix->busy = 0;
  if (trp != NULL && tr.done) store(ix, query, hh, mask | tr.read, &tr, slot);
  return count;
}

size_t mk_index_match (mk_index *ix, const mk_term *query, mk_match_fn fn,
                       void *ctx) {
  return match(ix, query, fn, ctx, NULL);
}

size_t mk_index_match_slot (mk_index *ix, mk_match_slot *slot, const mk_term *query,
                            mk_match_fn fn, void *ctx) {
  return match(ix, query, fn, ctx, slot);
}

void mk_match_slot_clear (mk_match_slot *slot) {
  clearentry(&slot->e);
  slot->wraps = 0;
  slot->misses = 0;
}

size_t mk_match_slot_items (const mk_index *ix, const mk_match_slot *slot,
                            mk_ilink *const **res) {
  if (slot->wraps != ix->wraps || !live(ix, &slot->e)) return 0;
  *res = slot->e.res;
  return slot->e.nres;
}

size_t mk_index_count (const mk_index *ix) {
  return ix->count;
}

size_t mk_index_nodes (const mk_index *ix) {
  return ix->nodes;
}

/* }====================================================== */

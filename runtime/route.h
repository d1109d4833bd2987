/*
** route.h: the routing index, a trie over the preorder token sequence of
** topics, with a wildcard branch at every node (DESIGN §6).
**
** Each indexed item is an intrusive `mk_ilink` embedded in the caller's
** record (an endpoint); the index never allocates per item, only per trie
** node (one where a topic parts from the others, not one per token), and
** never owns the items.  Matching a query term costs in proportion
** to the size of the query and the number of trie nodes that can still
** match, never a scan of every item: a wildcard in the query enumerates the
** subtrees it covers, a wildcard in an indexed topic is one branch.
**
** Items on the same leaf (equal topics) are kept in insertion order; the
** order between leaves is unspecified but deterministic.
*/
#ifndef MK_ROUTE_H
#define MK_ROUTE_H

#include "term.h"

typedef struct mk_index mk_index;
typedef struct mk_inode mk_inode;
typedef struct mk_ilink mk_ilink;

/* Embed one of these per indexed item.  Owned by the item's owner. */
struct mk_ilink {
  mk_ilink *prev, *next;   /* leaf list, insertion order; the first item's
                           ** prev is the last item, the last one's next NULL */
  mk_inode *leaf;          /* NULL when not indexed */
};

/* The callback for matches; return nonzero to stop the walk early. */
typedef int (*mk_match_fn)(mk_ilink *item, void *ctx);

mk_index *mk_index_new(void);
/* Frees the trie.  Items still linked are unlinked (their leaf set NULL). */
void mk_index_free(mk_index *ix);

/* Add `item` under `topic` (borrowed; the index keeps its own references
** to the atoms it needs, and to one topic per distinct topic indexed).
** Returns 0, or -1 on allocation failure. */
int mk_index_add(mk_index *ix, const mk_term *topic, mk_ilink *item);
/* Remove an item added earlier; prunes nodes left empty.  No-op when the
** item is not indexed. */
void mk_index_remove(mk_index *ix, mk_ilink *item);

/*
** Call fn for every item whose topic unifies with `query`, each exactly
** once.  The callback must not add to or remove from this index.  Returns
** the number of items visited.  A query of the same shape as a recent one
** is answered from a cache (route.c) that holds references to some of
** the top-level items of recent queries: they are released when an entry
** is replaced, when the index becomes empty, and by mk_index_free.
*/
size_t mk_index_match(mk_index *ix, const mk_term *query, mk_match_fn fn, void *ctx);

/*
** A match slot: the last answer of the match cache for one sender, kept
** by the sender itself.  A sender whose queries have the same shape and
** the same leading items each time (a tcp connection's inbound flow,
** channel(remote, local, data); the ground's watch of a socket, sending
** the same record at every wake-up) keeps one in its own record, beside
** the fields it reads to send anyway, and the match looks there before
** the cache's shared table, which at thousands of senders is out of the
** processor's cache and costs a miss or two per look (issue 10,
** docs/performance.md).  The slot holds what a cache entry does: the
** generation of the index it answered for, the query's header and the
** items the walk read (owned references), and up to MK_SLOT_RES matches;
** an add to or remove from the index voids it when the topic's header
** could match the query's (same record type or sequence length, or a
** wildcard topic; route.c, changed).  A zeroed slot is empty.
** One slot serves one index (one VM's sends, say) for its whole life; its
** owner releases it with mk_match_slot_clear.  The fields are route.c's:
** an entry as the shared table holds them (64 bytes, one cache line
** there), and how often the index's 32-bit generations had wrapped when
** the slot was filled, since a slot, unlike the table, is not cleared
** when it wraps.
*/
#define MK_SLOT_ITEMS 4
#define MK_SLOT_RES   2
typedef struct mk_match_entry {
  uint32_t gen;             /* the index's generation; 0: empty */
  uint8_t n;                /* header: arity or length (<= MK_SLOT_ITEMS) */
  uint8_t mask;             /* bit k: item k is part of the key */
  uint8_t nres;
  uint8_t bucket;           /* the header's bucket of generations */
  mk_rtype *rt;             /* header: owned reference, NULL for a sequence */
  mk_term *key[MK_SLOT_ITEMS];   /* owned references, where the mask has a bit */
  mk_ilink *res[MK_SLOT_RES];    /* the matches in walk order; valid for gen */
} mk_match_entry;

typedef struct mk_match_slot {
  uint32_t wraps;           /* first: read first, with the entry's start */
  uint32_t misses;          /* looks since the last that the entry answered
                            ** (in what was padding before the entry) */
  mk_match_entry e;
} mk_match_slot;

/* mk_index_match, looking in `slot` (not NULL) first and leaving there
** the answer it found or walked for query, when the cache would keep it
** and the slot holds no current answer, or has not given its answer to
** the last MK_SLOT_MISSES looks: a sender that takes turns between a few
** topics keeps one of them there rather than refilling it at each send. */
#define MK_SLOT_MISSES 8
size_t mk_index_match_slot(mk_index *ix, mk_match_slot *slot, const mk_term *query,
                           mk_match_fn fn, void *ctx);
/* Let go of what the slot holds; it is empty after. */
void mk_match_slot_clear(mk_match_slot *slot);
/* The items the slot holds while they are still the index's answer for
** the query that filled it (its entry is current): their number, at most
** MK_SLOT_RES, with *res pointing at them; else 0.  Reads only the slot
** and the index's generations, and changes nothing: for a prefetch of the
** records the next such query will reach (vm.h, mk_vm_prefetch). */
size_t mk_match_slot_items(const mk_index *ix, const mk_match_slot *slot,
                           mk_ilink *const **res);

/* Number of items and trie nodes, for tests and benchmarks. */
size_t mk_index_count(const mk_index *ix);
size_t mk_index_nodes(const mk_index *ix);

#endif

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

/* Number of items and trie nodes, for tests and benchmarks. */
size_t mk_index_count(const mk_index *ix);
size_t mk_index_nodes(const mk_index *ix);

#endif

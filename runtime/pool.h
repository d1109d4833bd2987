/*
** pool.h: a cache of freed small blocks in front of malloc.
**
** A message through market makes and frees a dozen small objects (terms,
** queued events, and the Lua tables, strings and userdata of the process
** that handles it), and a busy server frees them in bursts of dozens of the
** same size.  glibc's per-size cache holds 7 blocks, so most of these went
** through the slower paths of malloc (and its periodic consolidation).
** This cache keeps up to MK_POOL_HOLD bytes of blocks per size class, up to
** MK_POOL_MAX bytes, in a plain LIFO free list.  The classes are 24, 40,
** 56, ... bytes: each block with malloc's header fills a 16-byte-aligned
** chunk exactly.
**
** Every block is an ordinary malloc block: mk_pool_free with a size of at
** most what was asked of mk_pool_alloc is always right, and mk_pool_trim
** gives every cached block back to malloc.  Built with AddressSanitizer,
** the cache is off (every call goes to malloc and free), so that reuse of
** freed memory is still caught.
**
** Single-threaded, like the rest of market (see market.h).
*/
#ifndef MK_POOL_H
#define MK_POOL_H
#include <stddef.h>

/* Built with AddressSanitizer: the cache is off (MK_SANITIZED is 1). */
#if defined(__SANITIZE_ADDRESS__)
#define MK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MK_SANITIZED 1
#endif
#endif
#ifndef MK_SANITIZED
#define MK_SANITIZED 0
#endif

#define MK_POOL_MAX   512            /* larger blocks go straight to malloc */
#define MK_POOL_HOLD  (256 * 1024)   /* bytes kept per size class, at most */

/* n bytes (n > 0), or NULL when out of memory. */
void *mk_pool_alloc(size_t n);
/* Free p (NULL is ignored), a block of n bytes from mk_pool_alloc (or
** malloc, when n is at most its size). */
void mk_pool_free(void *p, size_t n);
/* A lua_Alloc over the cache (ud unused): for Lua states made by market. */
void *mk_pool_lalloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* How many blocks of more than MK_POOL_MAX bytes mk_pool_lalloc has freed
** or resized so far: while it stays the same, every such block a Lua state
** over it had is still where it was (lua/lterm.c's string cache). */
unsigned long mk_pool_lfrees(void);
/* Bytes now cached (allocated from malloc, free for reuse). */
size_t mk_pool_cached(void);
/* Give every cached block back to malloc. */
void mk_pool_trim(void);
#endif

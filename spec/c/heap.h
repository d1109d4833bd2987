/*
** heap.h: the heap in use, for the C tests that bound a footprint: what
** glibc counts (mallinfo2) less the free blocks the small-block cache
** keeps (runtime/pool.h), as market.memory() counts it.  Under
** AddressSanitizer, whose allocator keeps its own books, or elsewhere,
** HEAP_COUNTED is 0 and a test checks what it does without the bound.
*/
#ifndef MK_TEST_HEAP_H
#define MK_TEST_HEAP_H

#include <stddef.h>

#include "pool.h"

#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#include <malloc.h>
#define HEAP_COUNTED 1
static inline size_t heap_in_use(void) { return mallinfo2().uordblks - mk_pool_cached(); }
#else
#define HEAP_COUNTED 0
static inline size_t heap_in_use(void) { return 0; }
#endif

/* The malloc chunk an n-byte request takes (glibc, 64-bit). */
#define MALLOC_CHUNK(n) (((n) + 8 + 15) & ~(size_t)15)

#endif

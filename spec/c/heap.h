/*
** heap.h: the heap in use, for the C tests that bound a footprint.
** glibc counts it (mallinfo2); under AddressSanitizer, whose allocator
** keeps its own books, or elsewhere, HEAP_COUNTED is 0 and a test checks
** what it does without the bound.
*/
#ifndef MK_TEST_HEAP_H
#define MK_TEST_HEAP_H

#include <stddef.h>

#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#include <malloc.h>
#define HEAP_COUNTED 1
static inline size_t heap_in_use(void) { return mallinfo2().uordblks; }
#else
#define HEAP_COUNTED 0
static inline size_t heap_in_use(void) { return 0; }
#endif

/* The malloc chunk an n-byte request takes (glibc, 64-bit). */
#define MALLOC_CHUNK(n) (((n) + 8 + 15) & ~(size_t)15)

#endif

/*
** pool.c: the small-block cache (see pool.h).
*/
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#if MK_SANITIZED
#define POOL_OFF 1
#endif

/* Under valgrind, a cached block is made inaccessible and a reused one
** undefined, so that memcheck still reports use after free and reads of
** uninitialised memory in blocks the cache recycles.  The requests cost
** a few instructions outside valgrind; without the header they vanish. */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#endif
#endif
#ifndef VALGRIND_MAKE_MEM_NOACCESS
#define VALGRIND_MAKE_MEM_NOACCESS(p, n)   ((void)0)
#define VALGRIND_MAKE_MEM_UNDEFINED(p, n)  ((void)0)
#define VALGRIND_MAKE_MEM_DEFINED(p, n)    ((void)0)
#endif

/* Size classes of 16k + 8 bytes (24, 40, 56, ...): with its 8-byte header
** such a block is exactly one of malloc's 16-byte-aligned chunks (glibc's,
** and most others'), where classes of 16k bytes cost a chunk 16 bytes
** larger than the request needed (a 56-byte Lua table took a 64-byte
** block, an 80-byte chunk).  An idle echo.lua connection holds about 40
** such blocks (issue 10). */
#define NCLASS (MK_POOL_MAX / 16)

/* A cached block: the first word links it to the next. */
typedef struct pblock { struct pblock *next; } pblock;

/* Each class's list of cached blocks, last freed first (pool.h: every
** block given back is kept). */
static pblock *heads[NCLASS];
static size_t cached;    /* bytes in all lists */

/* The class of an n-byte request, 1 <= n <= MK_POOL_MAX, and the size of
** its blocks, (class + 1) * 16 + 8 bytes. */
static size_t classof(size_t n) {
  size_t k = (n + 7) >> 4;
  return k ? k - 1 : 0;
}

static size_t classsize(size_t k) { return ((k + 1) << 4) + 8; }

void *mk_pool_alloc(size_t n) {
#ifndef POOL_OFF
  if (n - 1 < MK_POOL_MAX) {
    size_t size = classsize(classof(n));
    pblock **head = &heads[classof(n)], *b = *head;
    if (b != NULL) {
      VALGRIND_MAKE_MEM_DEFINED(b, sizeof *b);
      *head = b->next;
      /* The next block of this class was freed long ago, often by a GC
      ** sweep: fetch it now, not when it is asked for (this load missed
      ** the cache on most allocations). */
      if (*head != NULL) __builtin_prefetch(*head, 1);
      cached -= size;
      VALGRIND_MAKE_MEM_UNDEFINED(b, size);
      return b;
    }
    return malloc(size);
  }
#endif
  return malloc(n);
}

void mk_pool_free(void *p, size_t n) {
#ifndef POOL_OFF
  if (p != NULL && n - 1 < MK_POOL_MAX) {
    size_t k = classof(n), size = classsize(k);
    pblock *b = p;
    b->next = heads[k];
    heads[k] = b;
    cached += size;
    VALGRIND_MAKE_MEM_NOACCESS(b, size);
    return;
  }
#else
  (void)n;
#endif
  free(p);
}

/* Blocks over MK_POOL_MAX bytes that mk_pool_lalloc freed or resized (a
** resize may move a block) since the start (pool.h, mk_pool_lfrees). */
static unsigned long lfrees;

unsigned long mk_pool_lfrees(void) { return lfrees; }

/* Lua gives the old size of every block it frees or resizes (for a new
** block, osize is a type tag instead).  Resizing within one class keeps
** the block; shrinking must not fail (Lua's rule), so when a smaller
** block cannot be had, the old, larger one stays. */
void *mk_pool_lalloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  void *q;
  (void)ud;
  if (ptr != NULL && osize > MK_POOL_MAX) lfrees++;   /* freed, or may move */
  if (ptr == NULL) return nsize ? mk_pool_alloc(nsize) : NULL;
  if (nsize == 0) { mk_pool_free(ptr, osize); return NULL; }
#ifndef POOL_OFF
  if (osize > MK_POOL_MAX && nsize > MK_POOL_MAX) return realloc(ptr, nsize);
  if (osize <= MK_POOL_MAX && nsize <= MK_POOL_MAX && classof(osize) == classof(nsize))
    return ptr;
  q = mk_pool_alloc(nsize);
  if (q == NULL) return nsize <= osize ? ptr : NULL;
  memcpy(q, ptr, osize < nsize ? osize : nsize);
  mk_pool_free(ptr, osize);
  return q;
#else
  q = realloc(ptr, nsize);
  return (q == NULL && nsize <= osize) ? ptr : q;
#endif
}

size_t mk_pool_cached(void) { return cached; }

void mk_pool_trim(void) {
  size_t k;
  for (k = 0; k < NCLASS; k++) {
    pblock *b = heads[k], *next;
    for (; b != NULL; b = next) {
      VALGRIND_MAKE_MEM_DEFINED(b, sizeof *b);
      next = b->next;
      free(b);
    }
    heads[k] = NULL;
  }
  cached = 0;
}

/*
** pool.c: the small-block cache (see pool.h).
*/
#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#if MK_SANITIZED
#define POOL_OFF 1
#endif

/* Under valgrind, a cached block is made inaccessible and a reused one
** undefined, so that memcheck still reports use after free and reads of
** uninitialised memory in blocks the cache recycles.  Each request is
** some fifteen instructions even outside valgrind (its arguments stored,
** four rotations, an exchange), three per block handed out and taken
** back: some 200 of an echoed round trip's 9,500 (issue 10).  So they
** are made only once the program is known to run under valgrind (asked
** at the first, RUNNING_ON_VALGRIND, itself a request); outside, each
** costs a load and a branch.  Without the header they vanish. */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#endif
#endif
#ifdef VALGRIND_MAKE_MEM_NOACCESS
static int on_valgrind = -1;     /* -1: not asked yet */

static int ask_valgrind(void) {
  on_valgrind = RUNNING_ON_VALGRIND ? 1 : 0;
  return on_valgrind;
}

#define UNDER_VALGRIND() (on_valgrind == 0 ? 0 : on_valgrind > 0 ? 1 : ask_valgrind())
#define MEM_NOACCESS(p, n)  do { if (UNDER_VALGRIND()) VALGRIND_MAKE_MEM_NOACCESS(p, n); } while (0)
#define MEM_UNDEFINED(p, n) do { if (UNDER_VALGRIND()) VALGRIND_MAKE_MEM_UNDEFINED(p, n); } while (0)
#define MEM_DEFINED(p, n)   do { if (UNDER_VALGRIND()) VALGRIND_MAKE_MEM_DEFINED(p, n); } while (0)
#else
#define MEM_NOACCESS(p, n)  ((void)0)
#define MEM_UNDEFINED(p, n) ((void)0)
#define MEM_DEFINED(p, n)   ((void)0)
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
static size_t linecached;  /* bytes of slabs not in a block in use (also in `cached`;
                           ** "blocks placed on cache lines" below) */

/* The class of an n-byte request, 1 <= n <= MK_POOL_MAX, and the size of
** its blocks, (class + 1) * 16 + 8 bytes. */
static size_t classof(size_t n) {
  size_t k = (n + 7) >> 4;
  return k ? k - 1 : 0;
}

static size_t classsize(size_t k) { return ((k + 1) << 4) + 8; }

/*
** Larger blocks, up to BIG_MAX bytes: a payload's string term, the Lua
** string a handler reads it as, the buffers of a framing.  glibc serves
** them from its bins, about 140 instructions a malloc or a free, and a
** server passing 4 KiB messages makes and frees two such blocks per
** round trip (issue 10).  They are kept too, in classes of BIG_STEP
** bytes (each block, with malloc's header, exactly that many bytes of
** chunk), last freed first, but only up to BIG_KEEP bytes in all: a burst
** of large messages must not leave its memory held, as a burst of small
** ones may (their classes are bounded by what a process keeps alive).
*/
#define BIG_STEP 256
#define BIG_MAX  MK_POOL_BIG_MAX
#define BIG_KEEP MK_POOL_BIG_KEEP
#define NBIG     ((BIG_MAX + 8 + BIG_STEP - 1) / BIG_STEP)   /* bigclassof(BIG_MAX) */

static pblock *bigheads[NBIG + 1];   /* [0] unused */
static size_t bigcached;             /* bytes in them; also in `cached` */

/* The reserve (pool.h), NULL while spent or not taken yet. */
static void *reserve;
unsigned long mk_pool_nspent;

/* The memory limit (pool.h, mk_pool_set_limit): 0 for none.  `used`
** counts the bytes of every malloc block the pool holds for its blocks
** (in use or cached: malloc_usable_size of each, as it comes and goes)
** and what mk_pool_map was told of.  `slack`: the reserve is spent, and
** the ceiling is the limit and the reserve's size above it until the
** reserve is taken again. */
static size_t limit, used;
static int slack;

/* Bytes libraries hold through mk_pool_lib_malloc and its kin (OpenSSL's,
** on libnats's threads too): counted with `used`, but atomic, and never
** refused (pool.h). */
static atomic_size_t outside;

static size_t total(void) {
  return used + atomic_load_explicit(&outside, memory_order_relaxed);
}

static int spend(void) {
  if (reserve == NULL) return 0;
  free(reserve);
  reserve = NULL;
  slack = 1;
  mk_pool_nspent++;
  return 1;
}

/* What malloc cannot give at once for n bytes it may give after the cache
** has given back what it keeps (pool.h), or else after the reserve has.
** Not for more than the reserve: a request that large (string.rep of a
** terabyte, which a process may try under pcall) fails as it would have,
** and leaves the reserve, and the process, alone. */
#define RETRY(call, n) \
  do { void *r_ = (call); \
       if (r_ == NULL && cached > 0) { mk_pool_trim(); r_ = (call); } \
       if (r_ == NULL && (n) <= MK_POOL_RESERVE && spend()) r_ = (call); \
       return r_; } while (0)

void *mk_pool_malloc(size_t n) { RETRY(malloc(n), n); }
void *mk_pool_calloc(size_t n, size_t size) {
  RETRY(calloc(n, size), size != 0 && n > MK_POOL_RESERVE / size ? MK_POOL_RESERVE + 1 : n * size);
}
void *mk_pool_realloc(void *p, size_t n) { RETRY(realloc(p, n), n); }

int mk_pool_reserve(void) {
  if (reserve != NULL) return 1;
  /* Over the limit still (the failed process's heap not yet collected):
  ** the reserve waits, and with it the margin it gives.  What the cache
  ** keeps of the failed process's goes back first. */
  if (limit != 0 && total() > limit && cached > linecached) mk_pool_trim();
  if (limit != 0 && total() > limit) return 0;
  reserve = malloc(MK_POOL_RESERVE);
  if (reserve == NULL && cached > 0) {
    mk_pool_trim();
    reserve = malloc(MK_POOL_RESERVE);
  }
  if (reserve != NULL) slack = 0;
  return reserve != NULL;
}

void mk_pool_unreserve(void) {
  free(reserve);
  reserve = NULL;
}

/*
** ---- the limit (pool.h, mk_pool_set_limit) ----
**
** The pool's blocks come from malloc through grab and regrab and go back
** through drop, which count them in `used`; nothing on the path of a
** block the cache hands out or takes back counts anything (a round trip
** of echo.lua makes and frees a dozen: issue 10).
*/
void mk_pool_set_limit(size_t bytes) { limit = bytes; }
size_t mk_pool_limit(void) { return limit; }

size_t mk_pool_used(void) { return total(); }

static size_t ceiling(void) { return slack ? limit + MK_POOL_RESERVE : limit; }

/* n more bytes would pass the ceiling: what the cache keeps goes back to
** malloc first.  Then the reserve, if held, is spent as if malloc had
** failed (vm.c charges the process whose event this is, which ends with
** "not enough memory") and the ceiling rises by its size.  Past that, a
** strict request (a Lua state's: Lua collects and asks again, then
** raises "not enough memory" in the code that asked) fails; the
** runtime's own requests go on, into the margin the limit leaves below
** the machine's, since the VM cannot do without them (vm.c, needed). */
static int room(size_t n, int strict) {
  if (cached > linecached) {
    mk_pool_trim();
    if (total() + n <= ceiling()) return 1;
  }
  if (n <= MK_POOL_RESERVE && spend()) return 1;
  return !strict;
}

#define OVER(n) (limit != 0 && total() + (n) > ceiling())

void mk_pool_map(size_t n) {
  if (OVER(n)) room(n, 0);
  used += n;
}

void mk_pool_unmap(size_t n) { used -= n; }

/* Any thread: only the count is touched, atomically; what the limit does
** about it (the cache trimmed, the reserve spent, a Lua request refused)
** is done at the pool's next request on the VM's thread. */
void *mk_pool_lib_malloc(size_t n) {
  void *p = malloc(n);
  if (p != NULL) atomic_fetch_add_explicit(&outside, malloc_usable_size(p), memory_order_relaxed);
  return p;
}

void *mk_pool_lib_realloc(void *p, size_t n) {
  size_t was = p != NULL ? malloc_usable_size(p) : 0;
  void *q;
  if (n == 0 && p != NULL) {      /* glibc's realloc(p, 0) frees p */
    mk_pool_lib_free(p);
    return NULL;
  }
  q = realloc(p, n);
  if (q != NULL) {
    atomic_fetch_sub_explicit(&outside, was, memory_order_relaxed);
    atomic_fetch_add_explicit(&outside, malloc_usable_size(q), memory_order_relaxed);
  }
  return q;
}

void mk_pool_lib_free(void *p) {
  if (p == NULL) return;
  atomic_fetch_sub_explicit(&outside, malloc_usable_size(p), memory_order_relaxed);
  free(p);
}

static void *grab(size_t n, int strict) {
  void *p;
  if (OVER(n) && !room(n, strict)) return NULL;
  if ((p = mk_pool_malloc(n)) != NULL) used += malloc_usable_size(p);
  return p;
}

static void drop(void *p) {
  size_t n;
  if (p == NULL) return;
  /* (a block from plain malloc given to mk_pool_free, against pool.h,
  ** must not wrap the count round to the limit) */
  n = malloc_usable_size(p);
  used = used > n ? used - n : 0;
  free(p);
}

/* p, a block from grab, resized to n bytes (NULL, p kept, when that
** cannot be). */
static void *regrab(void *p, size_t n, int strict) {
  size_t was = malloc_usable_size(p);
  void *q;
  if (n > was && OVER(n - was) && !room(n - was, strict)) return NULL;
  if ((q = mk_pool_realloc(p, n)) != NULL) used = used - was + malloc_usable_size(q);
  return q;
}

#ifndef POOL_OFF
/* The first block of the list at head (there is one), taken out, and
** the block p put first in it: `size` is what the block counts for in
** `cached`, and what memcheck is told of it. */
static void *take(pblock **head, size_t size) {
  pblock *b = *head;
  MEM_DEFINED(b, sizeof *b);
  *head = b->next;
  /* The next block of this list was freed long ago, often by a GC sweep:
  ** fetch it now, not when it is asked for (this load missed the cache
  ** on most allocations). */
  if (*head != NULL) __builtin_prefetch(*head, 1);
  cached -= size;
  MEM_UNDEFINED(b, size);
  return b;
}

static void keep(pblock **head, void *p, size_t size) {
  pblock *b = p;
  b->next = *head;
  *head = b;
  cached += size;
  MEM_NOACCESS(b, size);
}

/* The big class of n bytes, MK_POOL_MAX < n <= BIG_MAX, and its blocks'
** size: k * BIG_STEP - 8 bytes, the least that holds n. */
static size_t bigclassof(size_t n) { return (n + 8 + BIG_STEP - 1) / BIG_STEP; }
static size_t bigsize(size_t k) { return k * BIG_STEP - 8; }

static void *bigalloc(size_t n, int strict) {
  size_t k = bigclassof(n), size = bigsize(k);
  if (bigheads[k] == NULL) return grab(size, strict);
  bigcached -= size;
  return take(&bigheads[k], size);
}

/* Keep p, a block of more than MK_POOL_MAX bytes, or give it back to
** malloc.  Its class is found from the block itself, not from the size
** the caller gives: a block may come from malloc (pool.h) or from a
** realloc (mk_pool_lalloc), and the class must never promise more bytes
** than it has. */
static void bigfree(void *p) {
  size_t k = (malloc_usable_size(p) + 8) / BIG_STEP, size;
  if (k > NBIG) k = NBIG;
  size = bigsize(k);
  /* a class of at most MK_POOL_MAX bytes would never be asked for */
  if (size <= MK_POOL_MAX || bigcached + size > BIG_KEEP) { drop(p); return; }
  bigcached += size;
  keep(&bigheads[k], p, size);
}
#endif

/* mk_pool_alloc, and mk_pool_lalloc's with strict set (the limit fails
** a Lua state's request, not the runtime's: room above). */
static inline __attribute__((always_inline)) void *alloc(size_t n, int strict) {
#ifndef POOL_OFF
  if (n - 1 < MK_POOL_MAX) {
    size_t k = classof(n);
    return heads[k] != NULL ? take(&heads[k], classsize(k)) : grab(classsize(k), strict);
  }
  if (n <= BIG_MAX) return bigalloc(n, strict);
#endif
  return grab(n, strict);
}

void *mk_pool_alloc(size_t n) { return alloc(n, 0); }

void mk_pool_free(void *p, size_t n) {
#ifndef POOL_OFF
  if (p != NULL && n - 1 < MK_POOL_MAX) {
    keep(&heads[classof(n)], p, classsize(classof(n)));
    return;
  }
  if (p != NULL && n <= BIG_MAX) { bigfree(p); return; }
#else
  (void)n;
#endif
  drop(p);
}

/* Blocks over MK_POOL_MAX bytes that mk_pool_lalloc freed or resized (a
** resize may move a block) since the start (pool.h, mk_pool_lfrees). */
static unsigned long lfrees;

unsigned long mk_pool_lfrees(void) { return lfrees; }

/* The watch on the blocks of one size mk_pool_lalloc frees (pool.h,
** mk_pool_watch): none while watch_size is 0. */
static size_t watch_size;
static void (*watch_fn)(void *block);

void mk_pool_watch(size_t size, void (*fn)(void *block)) {
  watch_size = fn != NULL ? size : 0;
  watch_fn = fn;
}

/* Lua gives the old size of every block it frees or resizes (for a new
** block, osize is a type tag instead).  Resizing within one class keeps
** the block; shrinking must not fail (Lua's rule), so when a smaller
** block cannot be had, the old, larger one stays. */
void *mk_pool_lalloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  void *q;
  (void)ud;
  if (ptr != NULL && osize > MK_POOL_MAX) lfrees++;   /* freed, or may move */
  if (ptr == NULL) return nsize ? alloc(nsize, 1) : NULL;
  if (nsize == 0) {
    if (osize == watch_size && watch_fn != NULL) watch_fn(ptr);
    mk_pool_free(ptr, osize);
    return NULL;
  }
#ifndef POOL_OFF
  if (osize > MK_POOL_MAX && nsize > MK_POOL_MAX) return regrab(ptr, nsize, 1);
  if (osize <= MK_POOL_MAX && nsize <= MK_POOL_MAX && classof(osize) == classof(nsize))
    return ptr;
  q = alloc(nsize, 1);
  if (q == NULL) return nsize <= osize ? ptr : NULL;
  memcpy(q, ptr, osize < nsize ? osize : nsize);
  mk_pool_free(ptr, osize);
  return q;
#else
  q = regrab(ptr, nsize, 1);
  return (q == NULL && nsize <= osize) ? ptr : q;
#endif
}

size_t mk_pool_cached(void) { return cached; }

static void freelist(pblock **head) {
  pblock *b = *head, *next;
  for (; b != NULL; b = next) {
    MEM_DEFINED(b, sizeof *b);
    next = b->next;
    drop(b);
  }
  *head = NULL;
}

/*
** ---- blocks placed on cache lines (pool.h, mk_pool_alloc_at) ----
**
** A block of n bytes whose byte `at` must start a cache line takes whole
** lines: `lead` bytes before the block (so that byte `at` falls on a
** line's start), the block, and the rest of its last line.  Blocks of up
** to LINE_MAX lines are carved from slabs of SLAB_BYTES, each slab one
** malloc block on a line's boundary, and kept when freed, last freed
** first, in one list per number of lines; larger ones are an
** aligned_alloc each.  A slab is never given back while any block carved
** from it may be in use, and blocks are not counted per slab: mk_pool_trim
** frees the slabs once no block of any is in use (at the end of a
** program, when its last Lua state closes).
*/
#define LINE       64
#define LINE_MAX   8
#define SLAB_BYTES (64 * 1024)

static pblock *lineheads[LINE_MAX + 1];   /* [0] unused */
static char *slab_next, *slab_end;        /* what is left of the last slab */
static pblock *slabs;                     /* every slab, chained through its first line */
static size_t lineslive;   /* blocks of slabs in use */

static void *aligned_(size_t n) { RETRY(aligned_alloc(LINE, n), n); }

/* n bytes on a line's boundary, counted as grab counts (the VM's records:
** never refused for the limit). */
static void *aligned(size_t n) {
  void *p;
  if (OVER(n)) room(n, 0);
  if ((p = aligned_(n)) != NULL) used += malloc_usable_size(p);
  return p;
}

static size_t leadof(size_t at) { return (LINE - at % LINE) % LINE; }
static size_t linesof(size_t n, size_t at) { return (leadof(at) + n + LINE - 1) / LINE; }

#ifndef POOL_OFF
/* k lines from the slab being carved, or from a new one; NULL when out of
** memory.  The first line of a slab holds its link; what is left of the
** last slab when a block no longer fits stays counted as cached. */
static char *carve(size_t k) {
  char *b;
  if ((size_t)(slab_end - slab_next) < k * LINE) {
    pblock *s = aligned(SLAB_BYTES);
    if (s == NULL) return NULL;
    s->next = slabs;
    slabs = s;
    slab_next = (char *)s + LINE;
    slab_end = (char *)s + SLAB_BYTES;
    cached += SLAB_BYTES - LINE;
    linecached += SLAB_BYTES - LINE;
    MEM_NOACCESS(slab_next, SLAB_BYTES - LINE);
  }
  b = slab_next;
  slab_next += k * LINE;
  cached -= k * LINE;
  linecached -= k * LINE;
  MEM_UNDEFINED(b, k * LINE);
  return b;
}
#endif

void *mk_pool_alloc_at(size_t n, size_t at) {
  size_t lead = leadof(at), k = linesof(n, at);
  char *b;
#ifndef POOL_OFF
  if (k <= LINE_MAX) {
    if (lineheads[k] != NULL) {
      b = take(&lineheads[k], k * LINE);
      linecached -= k * LINE;
    } else if ((b = carve(k)) == NULL) {
      return NULL;
    }
    lineslive++;
    return b + lead;
  }
#endif
  b = aligned(k * LINE);
  return b != NULL ? b + lead : NULL;
}

void mk_pool_free_at(void *p, size_t n, size_t at) {
  size_t lead = leadof(at), k = linesof(n, at);
  if (p == NULL) return;
#ifdef POOL_OFF
  (void)k;
#else
  if (k <= LINE_MAX) {
    keep(&lineheads[k], (char *)p - lead, k * LINE);
    linecached += k * LINE;
    lineslive--;
    return;
  }
#endif
  drop((char *)p - lead);
}

void mk_pool_trim(void) {
  size_t k;
  for (k = 0; k < NCLASS; k++) freelist(&heads[k]);
  for (k = 1; k <= NBIG; k++) freelist(&bigheads[k]);
  bigcached = 0;
  if (lineslive == 0) {
    while (slabs != NULL) {
      pblock *s = slabs;
      slabs = s->next;
      drop(s);
    }
    for (k = 1; k <= LINE_MAX; k++) lineheads[k] = NULL;
    slab_next = slab_end = NULL;
    linecached = 0;
  }
  cached = linecached;   /* what stays of the slabs, while some block is in use */
}

/* ---- a cache in front of another allocator (pool.h, mk_pool_over) ---- */

struct mk_pool_over {
  mk_alloc_fn f;         /* the allocator underneath, and its ud */
  void *ud;
  int passing;           /* 1: keeps nothing, passes every call on */
  int counting;          /* 1: `lent` is in the limit's count (mk_pool_over_count) */
  size_t lent;           /* bytes of the Lua state's blocks from f, kept ones too */
  size_t cached;         /* bytes in the lists, each block counted as the
                         ** class it falls in (classsize): what glibc's
                         ** malloc counts of it, as for the pool's own */
  /* Freed blocks of n bytes, MIN_KEPT <= n <= MK_POOL_MAX, in heads[n]:
  ** one list per exact size, so that a block only ever goes back to f,
  ** or out again, as the size f lent it for. */
  pblock *heads[MK_POOL_MAX + 1];
};

/* Smaller blocks cannot hold the link; Lua makes few (a prototype's
** line information). */
#define MIN_KEPT sizeof(pblock)

mk_pool_over *mk_pool_over_new(mk_alloc_fn f, void *ud) {
  mk_pool_over *o = calloc(1, sizeof *o);
  if (o == NULL) return NULL;
  o->f = f;
  o->ud = ud;
  return o;
}

static void over_drain(mk_pool_over *o);

/* d more bytes lent by f (fewer when negative), in the limit's count. */
static void over_lent(mk_pool_over *o, ptrdiff_t d) {
  if (!o->counting) return;       /* (over_drain's blocks, before counting) */
  o->lent += (size_t)d;
  used += (size_t)d;
}

void mk_pool_over_count(mk_pool_over *o, size_t already) {
  if (o->counting) return;
  o->counting = 1;
  o->lent = already;
  used += already;
}

/* n more bytes from f would pass the limit: what o keeps goes back to f
** first, then as the pool's own requests (room); 0: refused. */
static int over_room(mk_pool_over *o, size_t n) {
  if (!OVER(n)) return 1;
  over_drain(o);
  return !OVER(n) || room(n, 1);
}

/* Every cached block back to f. */
static void over_drain(mk_pool_over *o) {
  size_t n;
  for (n = MIN_KEPT; n <= MK_POOL_MAX; n++) {
    pblock *b = o->heads[n], *next;
    for (; b != NULL; b = next) {
      MEM_DEFINED(b, sizeof *b);
      next = b->next;
      o->f(o->ud, b, n, 0);
      over_lent(o, -(ptrdiff_t)n);
    }
    o->heads[n] = NULL;
  }
  o->cached = 0;
}

/* A call mk_pool_over_lalloc passes on to f, counted (o->counting): a
** new block (ptr NULL, nsize > 0), a resize or a free.  Apart, so that a
** cache that does not count passes its calls on as before (a tail call). */
static __attribute__((noinline)) void *over_counted(mk_pool_over *o, void *ptr, size_t osize,
                                                     size_t nsize) {
  void *q;
  size_t was = ptr != NULL ? osize : 0;   /* (a new block's osize is a type tag) */
  /* (a shrink must not fail: Lua's rule) */
  if (nsize > was && !over_room(o, nsize - was)) return NULL;
  q = o->f(o->ud, ptr, osize, nsize);
  if (q == NULL && ptr == NULL && o->cached > 0) {   /* what is kept may make room */
    over_drain(o);
    q = o->f(o->ud, NULL, osize, nsize);
  }
  if (q != NULL || nsize == 0) over_lent(o, (ptrdiff_t)nsize - (ptrdiff_t)was);
  return q;
}

void *mk_pool_over_lalloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  mk_pool_over *o = ud;
  void *q;
  if (ptr == NULL) {                 /* osize is Lua's type tag */
    if (nsize - MIN_KEPT <= MK_POOL_MAX - MIN_KEPT && o->heads[nsize] != NULL) {
      pblock *b = o->heads[nsize];
      MEM_DEFINED(b, sizeof *b);
      o->heads[nsize] = b->next;
      if (b->next != NULL) __builtin_prefetch(b->next, 1);
      o->cached -= classsize(classof(nsize));
      MEM_UNDEFINED(b, nsize);
      return b;
    }
    if (nsize == 0) return NULL;
    if (o->counting) return over_counted(o, NULL, osize, nsize);
    q = o->f(o->ud, NULL, osize, nsize);
    if (q == NULL && o->cached > 0) {   /* what is kept may make room */
      over_drain(o);
      q = o->f(o->ud, NULL, osize, nsize);
    }
    return q;
  }
  if (nsize == 0 && !o->passing && osize - MIN_KEPT <= MK_POOL_MAX - MIN_KEPT) {
    pblock *b = ptr;
    b->next = o->heads[osize];
    o->heads[osize] = b;
    o->cached += classsize(classof(osize));
    MEM_NOACCESS(b, osize);
    return NULL;
  }
  if (o->counting) return over_counted(o, ptr, osize, nsize);
  return o->f(o->ud, ptr, osize, nsize);   /* frees and resizes */
}

mk_alloc_fn mk_pool_over_under(const mk_pool_over *o, void **ud) {
  *ud = o->ud;
  return o->f;
}

size_t mk_pool_over_cached(const mk_pool_over *o) { return o ? o->cached : 0; }

void mk_pool_over_pass(mk_pool_over *o) {
  over_drain(o);
  o->passing = 1;
}

void mk_pool_over_free(mk_pool_over *o) {
  if (o == NULL) return;
  over_drain(o);
  over_lent(o, -(ptrdiff_t)o->lent);       /* the state's blocks: no longer ours to count */
  free(o);
}

/*
** test_pool.c: the small-block cache (runtime/pool.h).
*/
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "check.h"
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#endif
#endif
#include "pool.h"
#include "vsize.h"

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ON 0       /* pool.c leaves everything to malloc under ASan */
#else
#define POOL_ON 1
#endif

static void reuse (void) {
  void *p, *q, *r;
  mk_pool_trim();
  p = mk_pool_alloc(40);
  CHECK(p != NULL);
  memset(p, 0xab, 40);
  mk_pool_free(p, 40);
  CHECK(mk_pool_cached() == (POOL_ON ? 40u : 0u));   /* the 25..40 class */
  q = mk_pool_alloc(33);
  if (POOL_ON) CHECK(q == p);          /* last freed, first reused */
  CHECK(mk_pool_cached() == 0);
  r = mk_pool_alloc(41);                /* the next class: a new block */
  CHECK(r != NULL && r != q);
  memset(r, 0, 41);
  mk_pool_free(q, 33);
  mk_pool_free(r, 41);
  CHECK(mk_pool_cached() == (POOL_ON ? 40u + 56u : 0u));
  mk_pool_free(NULL, 16);               /* ignored */
  mk_pool_trim();
  CHECK(mk_pool_cached() == 0);
}

/* Blocks above MK_POOL_MAX are kept up to MK_POOL_BIG_MAX bytes each and
** MK_POOL_BIG_KEEP bytes in all; larger ones go back to malloc. */
static void large_blocks (void) {
  enum { N = 2 * MK_POOL_BIG_KEEP / 4096 };
  void *p = mk_pool_alloc(MK_POOL_MAX + 1), *q, *blocks[N];
  size_t i;
  mk_pool_trim();
  CHECK(p != NULL);
  memset(p, 1, MK_POOL_MAX + 1);
  mk_pool_free(p, MK_POOL_MAX + 1);
  CHECK(POOL_ON ? mk_pool_cached() >= MK_POOL_MAX + 1 : mk_pool_cached() == 0);
  q = mk_pool_alloc(MK_POOL_MAX + 100);          /* the same class: that block */
  if (POOL_ON) CHECK(q == p);
  CHECK(mk_pool_cached() == 0);
  mk_pool_free(q, MK_POOL_MAX + 100);
  p = mk_pool_alloc(MK_POOL_BIG_MAX + 1);        /* beyond: not kept */
  CHECK(p != NULL);
  memset(p, 2, MK_POOL_BIG_MAX + 1);
  i = mk_pool_cached();
  mk_pool_free(p, MK_POOL_BIG_MAX + 1);
  CHECK(mk_pool_cached() == i);
  mk_pool_trim();
  CHECK(mk_pool_cached() == 0);
  for (i = 0; i < N; i++) CHECK((blocks[i] = mk_pool_alloc(4096)) != NULL);
  for (i = 0; i < N; i++) mk_pool_free(blocks[i], 4096);
  CHECK(POOL_ON ? mk_pool_cached() > MK_POOL_BIG_KEEP / 2 : mk_pool_cached() == 0);
  CHECK(mk_pool_cached() <= MK_POOL_BIG_KEEP);   /* half of them went back */
  mk_pool_trim();
  CHECK(mk_pool_cached() == 0);
}

/* A large block's class is read from the block, not from the size it is
** freed with (which may be less than it holds, or than it was asked for
** when a realloc made it): each block handed out again
** holds what is asked of it. */
static void large_blocks_hold_the_request (void) {
  size_t sizes[] = { 600, 700, 1000, 4000, 4096, 4100, 9000, 60000, MK_POOL_BIG_MAX };
  size_t i, n;
  for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    void *p = mk_pool_alloc(sizes[i]);
    CHECK(p != NULL);
    mk_pool_free(p, sizes[i] - 50);               /* freed as smaller */
    for (n = MK_POOL_MAX + 1; n <= sizes[i] + 300 && n <= MK_POOL_BIG_MAX; n += 7) {
      void *q = mk_pool_alloc(n);
      CHECK(q != NULL && malloc_usable_size(q) >= n);
      mk_pool_free(q, n);
    }
    mk_pool_trim();
  }
  /* the largest sizes kept, each taken again from its class */
  for (n = MK_POOL_BIG_MAX - 300; n <= MK_POOL_BIG_MAX; n++) {
    void *p = mk_pool_alloc(n), *q;
    CHECK(p != NULL && malloc_usable_size(p) >= n);
    memset(p, 3, n);
    mk_pool_free(p, n);
    q = mk_pool_alloc(n);
    if (POOL_ON) CHECK(q == p);
    mk_pool_free(q, n);
  }
  mk_pool_trim();
}

/* A block is the size of the malloc chunk it takes, less malloc's 8-byte
** header: 16k + 8 bytes, the least such size that holds the request (a
** 56-byte Lua table takes a 56-byte block, a 64-byte chunk, not 80). */
static void classes_fit_chunks (void) {
  size_t n;
  for (n = 1; n <= MK_POOL_MAX; n++) {
    size_t want = n <= 24 ? 24 : ((n + 7) & ~(size_t)15) + 8;
    void *p = mk_pool_alloc(n);
    CHECK(p != NULL);
    memset(p, 0, n);
    mk_pool_free(p, n);
    CHECK(mk_pool_cached() == (POOL_ON ? want : 0u));
    mk_pool_trim();
  }
}

/* A class keeps every block given back, however many (a wave of 100,000
** exits frees 7 MiB of process records alone; the cache once kept 256 KiB
** a class and gave the rest to malloc), and hands the same blocks out
** again, last freed first, before it asks malloc for more. */
static int byaddress (const void *a, const void *b) {
  uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;
  return x < y ? -1 : x > y;
}

static void keeps_every_block (void) {
  enum { N = 100000 };
  static void *blocks[N], *again[N];
  size_t i;
  mk_pool_trim();
  for (i = 0; i < N; i++) {
    blocks[i] = mk_pool_alloc(72);
    CHECK(blocks[i] != NULL);
  }
  for (i = 0; i < N; i++) mk_pool_free(blocks[i], 72);
  CHECK(mk_pool_cached() == (POOL_ON ? N * 72u : 0u));
  for (i = 0; i < N; i++) again[i] = mk_pool_alloc(72);
  if (POOL_ON) {
    CHECK(again[0] == blocks[N - 1] && again[N - 1] == blocks[0]);
    qsort(blocks, N, sizeof *blocks, byaddress);
    qsort(again, N, sizeof *again, byaddress);
    CHECK(memcmp(blocks, again, sizeof blocks) == 0);
  }
  CHECK(mk_pool_cached() == 0);
  for (i = 0; i < N; i++) mk_pool_free(again[i], 72);
  mk_pool_trim();
  CHECK(mk_pool_cached() == 0);
}

/* The lua_Alloc contract: contents kept over resizes, shrinking never
** fails, nsize 0 frees, a NULL ptr's osize is only a type tag. */
static void lua_allocator (void) {
  unsigned char *p, *q;
  size_t i;
  p = mk_pool_lalloc(NULL, NULL, 5 /* LUA_TTABLE */, 20);
  CHECK(p != NULL);
  for (i = 0; i < 20; i++) p[i] = (unsigned char)i;
  q = mk_pool_lalloc(NULL, p, 20, 24);            /* same class: in place */
  if (POOL_ON) CHECK(q == p);
  CHECK(q != NULL && q[0] == 0 && q[19] == 19);
  p = mk_pool_lalloc(NULL, q, 24, 2000);          /* grow past the cache */
  CHECK(p != NULL);
  for (i = 0; i < 20; i++) CHECK(p[i] == (unsigned char)i);
  memset(p + 20, 7, 1980);
  q = mk_pool_lalloc(NULL, p, 2000, 4000);        /* large to large */
  CHECK(q != NULL && q[0] == 0 && q[19] == 19 && q[1999] == 7);
  p = mk_pool_lalloc(NULL, q, 4000, 10);          /* shrink into the cache */
  CHECK(p != NULL && p[9] == 9);
  CHECK(mk_pool_lalloc(NULL, p, 10, 0) == NULL);  /* free */
  CHECK(mk_pool_lalloc(NULL, NULL, 0, 0) == NULL);
  mk_pool_trim();
}

/* Under valgrind (spec/run runs this file under memcheck too), a cached
** block is unaddressable and one handed out again addressable but
** undefined, so that memcheck sees use after free and uninitialised reads
** through the cache (pool.c asks whether valgrind runs before making its
** requests).  Outside valgrind there is nothing to look at. */
static void valgrind_sees_the_cache (void) {
#ifdef RUNNING_ON_VALGRIND
  size_t sizes[] = { 40, 4096 }, i;
  unsigned char vbits[8];
  if (!RUNNING_ON_VALGRIND || !POOL_ON) return;
  for (i = 0; i < 2; i++) {
    void *p = mk_pool_alloc(sizes[i]), *q;
    memset(p, 0, sizes[i]);
    CHECK(VALGRIND_GET_VBITS(p, vbits, 8) == 1 && vbits[0] == 0);   /* defined */
    mk_pool_free(p, sizes[i]);
    CHECK(VALGRIND_GET_VBITS(p, vbits, 8) == 3);                     /* unaddressable */
    q = mk_pool_alloc(sizes[i]);
    CHECK(q == p);
    CHECK(VALGRIND_GET_VBITS(q, vbits, 8) == 1 && vbits[0] == 0xff); /* undefined */
    mk_pool_free(q, sizes[i]);
  }
  {                                   /* placed blocks too (mk_pool_alloc_at) */
    char *p = mk_pool_alloc_at(40, 8), *q;
    memset(p, 0, 40);
    CHECK(VALGRIND_GET_VBITS(p, vbits, 8) == 1 && vbits[0] == 0);
    mk_pool_free_at(p, 40, 8);
    CHECK(VALGRIND_GET_VBITS(p, vbits, 8) == 3);
    q = mk_pool_alloc_at(40, 8);
    CHECK(q == p);
    CHECK(VALGRIND_GET_VBITS(q, vbits, 8) == 1 && vbits[0] == 0xff);
    mk_pool_free_at(q, 40, 8);
  }
  mk_pool_trim();
#endif
}

/* mk_pool_watch: the blocks of the watched size that mk_pool_lalloc
** frees are shown before they go, and no others. */
static void *watched[4];
static int nwatched;
static void note_block(void *block) { if (nwatched < 4) watched[nwatched++] = block; }

static void watch_frees (void) {
  void *a = mk_pool_lalloc(NULL, NULL, 7, 48), *b = mk_pool_lalloc(NULL, NULL, 7, 56);
  void *c = mk_pool_lalloc(NULL, NULL, 7, 48);
  nwatched = 0;
  mk_pool_watch(48, note_block);
  CHECK(a != NULL && b != NULL && c != NULL);
  mk_pool_lalloc(NULL, a, 48, 0);
  mk_pool_lalloc(NULL, b, 56, 0);                 /* another size: not shown */
  c = mk_pool_lalloc(NULL, c, 48, 40);            /* a resize: not shown */
  CHECK(nwatched == 1 && watched[0] == a);
  mk_pool_watch(0, NULL);
  mk_pool_lalloc(NULL, c, 40, 0);
  a = mk_pool_lalloc(NULL, NULL, 7, 48);
  mk_pool_lalloc(NULL, a, 48, 0);                 /* no watch any more */
  CHECK(nwatched == 1);
  mk_pool_trim();
}

/* An allocator underneath that counts its blocks and checks that each
** comes back as the size it lent (mk_pool_over keeps blocks by exact
** size, so that it is right over any allocator). */
static long under_live, under_wrong, under_calls;
static int under_fail;
static void *under (void *ud, void *ptr, size_t osize, size_t nsize) {
  size_t *h = ptr ? (size_t *)ptr - 2 : NULL;
  (void)ud;
  under_calls++;
  if (h != NULL && h[0] != osize) under_wrong++;
  if (nsize == 0) {
    if (h != NULL) { under_live--; free(h); }
    return NULL;
  }
  if (ptr == NULL && under_fail) return NULL;
  h = realloc(h, 2 * sizeof *h + nsize);
  if (h == NULL) return NULL;
  if (ptr == NULL) under_live++;
  h[0] = nsize;
  return h + 2;
}

static void over_another (void) {
  mk_pool_over *o = mk_pool_over_new(under, NULL);
  void *p, *q, *r, *big;
  long calls;
  void *ud;
  CHECK(o != NULL && mk_pool_over_under(o, &ud) == under && ud == NULL);
  p = mk_pool_over_lalloc(o, NULL, 5, 40);
  q = mk_pool_over_lalloc(o, NULL, 5, 41);
  CHECK(p != NULL && q != NULL && under_live == 2);
  CHECK(mk_pool_over_lalloc(o, p, 40, 0) == NULL);       /* kept */
  CHECK(mk_pool_over_lalloc(o, q, 41, 0) == NULL);
  CHECK(under_live == 2 && mk_pool_over_cached(o) == 40 + 56);   /* as malloc counts */
  calls = under_calls;
  r = mk_pool_over_lalloc(o, NULL, 5, 40);               /* its exact size only */
  CHECK(r == p && under_calls == calls && mk_pool_over_cached(o) == 56);
  CHECK(mk_pool_over_lalloc(o, NULL, 5, 0) == NULL);      /* nsize 0: nothing */
  big = mk_pool_over_lalloc(o, NULL, 5, MK_POOL_MAX + 1); /* large: passed on */
  CHECK(big != NULL && under_live == 3);
  CHECK(mk_pool_over_lalloc(o, big, MK_POOL_MAX + 1, 0) == NULL && under_live == 2);
  p = mk_pool_over_lalloc(o, r, 40, 100);                 /* resize: passed on */
  CHECK(p != NULL);
  under_fail = 1;                                         /* out of memory: what is */
  CHECK(mk_pool_over_lalloc(o, NULL, 5, 72) == NULL);     /* kept goes back first */
  CHECK(mk_pool_over_cached(o) == 0 && under_live == 1);
  under_fail = 0;
  mk_pool_over_pass(o);                                   /* keeps nothing from now */
  CHECK(mk_pool_over_lalloc(o, p, 100, 0) == NULL && under_live == 0);
  CHECK(mk_pool_over_cached(o) == 0);
  mk_pool_over_free(o);
  o = mk_pool_over_new(under, NULL);
  p = mk_pool_over_lalloc(o, NULL, 5, 24);
  mk_pool_over_lalloc(o, p, 24, 0);
  mk_pool_over_free(o);                                   /* gives back what it kept */
  CHECK(under_live == 0 && under_wrong == 0);
  CHECK(mk_pool_over_cached(NULL) == 0);
  mk_pool_over_free(NULL);
}

/* mk_pool_alloc_at: byte `at` of each block starts a cache line; a freed
** block is the next of its lines' count; the slabs' free bytes count as
** cached, and go back to malloc at a trim once no block is in use. */
static void placed_blocks (void) {
  enum { N = 3000 };                  /* past one 64 KiB slab of 128-byte blocks */
  static char *blocks[N];
  size_t ats[] = { 0, 8, 48, 63 }, i, k, before;
  mk_pool_trim();
  CHECK(mk_pool_cached() == 0);
  for (k = 0; k < 4; k++) {
    char *p = mk_pool_alloc_at(100, ats[k]), *q;
    CHECK(p != NULL && ((uintptr_t)p + ats[k]) % 64 == 0);
    memset(p, 0x5a, 100);
    mk_pool_free_at(p, 100, ats[k]);
    q = mk_pool_alloc_at(90, ats[k]);   /* as many lines: that block */
    if (POOL_ON) CHECK(q == p);
    mk_pool_free_at(q, 90, ats[k]);
  }
  before = mk_pool_cached();
  for (i = 0; i < N; i++) {
    blocks[i] = mk_pool_alloc_at(72, 0);
    CHECK(blocks[i] != NULL && (uintptr_t)blocks[i] % 64 == 0);
    memset(blocks[i], (int)i, 72);
  }
  for (i = 1; i < N; i++) CHECK(blocks[i] != blocks[i - 1]);
  for (i = 0; i < N; i++) CHECK((unsigned char)blocks[i][71] == (unsigned char)i);
  CHECK(POOL_ON ? mk_pool_cached() < before : mk_pool_cached() == 0);
  for (i = 0; i < N; i += 2) mk_pool_free_at(blocks[i], 72, 0);
  mk_pool_trim();                     /* blocks still in use: the slabs stay */
  CHECK(POOL_ON ? mk_pool_cached() >= (size_t)N / 2 * 128 : mk_pool_cached() == 0);
  for (i = 1; i < N; i += 2) CHECK((unsigned char)blocks[i][0] == (unsigned char)i);
  for (i = 1; i < N; i += 2) mk_pool_free_at(blocks[i], 72, 0);
  mk_pool_trim();                     /* none in use: all of it back */
  CHECK(mk_pool_cached() == 0);
  /* beyond the slabs' blocks: one aligned_alloc each, placed all the same */
  blocks[0] = mk_pool_alloc_at(4000, 16);
  CHECK(blocks[0] != NULL && ((uintptr_t)blocks[0] + 16) % 64 == 0);
  memset(blocks[0], 1, 4000);
  mk_pool_free_at(blocks[0], 4000, 16);
  CHECK(mk_pool_cached() == 0);
  mk_pool_free_at(NULL, 10, 0);       /* ignored */
}

/* Under an address-space limit (ulimit -v) malloc fails: the pool gives
** back what it keeps and tries again, then spends its reserve once, and
** takes the reserve again when memory allows.  Not under valgrind (its
** own address space) nor ASan (its shadow does not fit a low limit). */
static void reserve_when_memory_runs_out (void) {
  struct rlimit old, low;
  void *big[512], *chain = NULL, *p;
  size_t n = 0, i, small = 0, at = vsize();
  unsigned long spent;
#ifdef RUNNING_ON_VALGRIND
  if (RUNNING_ON_VALGRIND) return;
#endif
  if (!POOL_ON || at == 0 || getrlimit(RLIMIT_AS, &old) != 0) return;
  mk_pool_trim();
  CHECK(mk_pool_reserve() == 1);
  spent = mk_pool_nspent;
  low = old;
  low.rlim_cur = at + ((size_t)64 << 20);      /* 64 MiB more than now */
  CHECK(setrlimit(RLIMIT_AS, &low) == 0);
  /* 1 MiB blocks until memory is out: the reserve's 8 MiB spent once, on
  ** the way, then NULL. */
  while (n < 512 && (big[n] = mk_pool_malloc((size_t)1 << 20)) != NULL) n++;
  CHECK(n > 16 && n < 512);
  CHECK(mk_pool_nspent == spent + 1);
  CHECK(mk_pool_reserve() == 0);               /* no room for it yet */
  for (i = 0; i < n; i++) free(big[i]);
  CHECK(mk_pool_reserve() == 1);               /* taken again */
  /* Small blocks until memory is out, then all kept by the cache: a block
  ** of another size finds their memory (given back), not a failure. */
  while ((p = mk_pool_alloc(40)) != NULL) {
    *(void **)p = chain;
    chain = p;
    small++;
  }
  CHECK(small > 100000);
  CHECK(mk_pool_nspent == spent + 2);          /* the reserve, spent again */
  while (chain != NULL) {
    p = chain;
    chain = *(void **)p;
    mk_pool_free(p, 40);
  }
  CHECK(mk_pool_cached() >= small * 40);
  p = mk_pool_malloc((size_t)16 << 20);
  CHECK(p != NULL);
  CHECK(mk_pool_cached() == 0);                /* trimmed for it */
  free(p);
  CHECK(mk_pool_nspent == spent + 2);
  CHECK(setrlimit(RLIMIT_AS, &old) == 0);
  CHECK(mk_pool_reserve() == 1);
  mk_pool_unreserve();
}


/* The memory limit's count (pool.h, mk_pool_used): every block the pool
** takes from malloc, while it holds it, cached or not; the queues' mapped
** blocks (mk_pool_map); nothing else. */
static void limit_counts_blocks (void) {
  size_t u0, u1;
  void *p, *q, *r;
  mk_pool_trim();
  u0 = mk_pool_used();
  p = mk_pool_alloc(40);                          /* from malloc: none cached */
  CHECK(p != NULL && mk_pool_used() >= u0 + 40 && mk_pool_used() < u0 + 100);
  u1 = mk_pool_used();
  mk_pool_free(p, 40);                            /* cached: still held */
  CHECK(mk_pool_used() == (POOL_ON ? u1 : u0));
  q = mk_pool_alloc(200000);                      /* past the classes */
  CHECK(q != NULL && mk_pool_used() >= u1 + 200000 - (POOL_ON ? 0 : 100));
  r = mk_pool_lalloc(NULL, NULL, 4 /* LUA_TSTRING */, 3000);
  CHECK(r != NULL);
  r = mk_pool_lalloc(NULL, r, 3000, 300000);      /* Lua's resize */
  CHECK(r != NULL && mk_pool_used() >= u1 + 500000 - (POOL_ON ? 0 : 100));
  CHECK(mk_pool_lalloc(NULL, r, 300000, 0) == NULL);
  mk_pool_free(q, 200000);
  p = malloc(100000);                             /* not the pool's */
  CHECK(mk_pool_used() < u1 + 10000);
  free(p);
  mk_pool_map(65536);
  CHECK(mk_pool_used() >= u0 + 65536);
  mk_pool_unmap(65536);
  mk_pool_trim();
  CHECK(mk_pool_used() == u0);
}

/* Past the limit, a Lua state's request is handled as malloc refusing it:
** the cache given back, then the reserve spent once (the VM charges the
** process of that event), then NULL past the reserve's margin; the VM's
** own requests go on.  The reserve is taken again once under the limit. */
static void limit_fails_lua_not_the_vm (void) {
  enum { N = 200, BLOCK = 100000 };
  void *lua[N], *vm;
  size_t n = 0, i;
  unsigned long spent;
  mk_pool_trim();
  CHECK(mk_pool_reserve() == 1);
  spent = mk_pool_nspent;
  mk_pool_set_limit(mk_pool_used() + ((size_t)4 << 20));
  CHECK(mk_pool_limit() != 0);
  while (n < N && (lua[n] = mk_pool_lalloc(NULL, NULL, 4, BLOCK)) != NULL) n++;
  /* 4 MiB up to the limit, and the reserve's 8 above it */
  CHECK(n * BLOCK > ((size_t)12 << 20) - 2 * BLOCK && n * BLOCK <= ((size_t)12 << 20));
  CHECK(mk_pool_nspent == spent + 1);
  vm = mk_pool_alloc(BLOCK);                      /* the VM's: not refused */
  CHECK(vm != NULL);
  CHECK(mk_pool_reserve() == 0);                  /* over the limit yet */
  mk_pool_free(vm, BLOCK);
  for (i = 0; i < n; i++) mk_pool_lalloc(NULL, lua[i], BLOCK, 0);
  CHECK(mk_pool_reserve() == 1);                  /* taken again */
  n = 0;                                          /* and the margin with it */
  while (n < N && (lua[n] = mk_pool_lalloc(NULL, NULL, 4, BLOCK)) != NULL) n++;
  CHECK(mk_pool_nspent == spent + 2);
  CHECK(n * BLOCK > ((size_t)12 << 20) - 2 * BLOCK);
  for (i = 0; i < n; i++) mk_pool_lalloc(NULL, lua[i], BLOCK, 0);
  /* A request larger than the reserve fails as it is, the reserve kept */
  CHECK(mk_pool_reserve() == 1);
  CHECK(mk_pool_lalloc(NULL, NULL, 4, (size_t)16 << 20) == NULL);
  CHECK(mk_pool_nspent == spent + 2);
  mk_pool_set_limit(0);
  CHECK(mk_pool_limit() == 0);
  vm = mk_pool_lalloc(NULL, NULL, 4, (size_t)16 << 20);   /* no limit: fine */
  CHECK(vm != NULL);
  mk_pool_lalloc(NULL, vm, (size_t)16 << 20, 0);
  mk_pool_trim();
  mk_pool_unreserve();
}

/* A cache over another allocator counts its Lua state's bytes once told
** to (mk_pool_over_count: what the state holds already, then every block
** lent, kept ones too), refuses past the limit as mk_pool_lalloc does, and
** takes them all out when freed. */
static void limit_counts_over_another (void) {
  mk_pool_over *o = mk_pool_over_new(under, NULL);
  void *p, *q, *big[64];
  size_t u0, n = 0, i;
  mk_pool_trim();
  u0 = mk_pool_used();
  CHECK(o != NULL);
  p = mk_pool_over_lalloc(o, NULL, 5, 100);        /* not counting yet */
  CHECK(p != NULL && mk_pool_used() == u0);
  mk_pool_over_count(o, 5000);                      /* the state's 5000, p among them */
  CHECK(mk_pool_used() == u0 + 5000);
  q = mk_pool_over_lalloc(o, NULL, 5, 300);
  CHECK(mk_pool_used() == u0 + 5300);
  q = mk_pool_over_lalloc(o, q, 300, 1000);         /* resized through f */
  CHECK(q != NULL && mk_pool_used() == u0 + 6000);
  mk_pool_over_lalloc(o, p, 100, 0);                /* kept: still lent */
  CHECK(mk_pool_used() == u0 + 6000);
  mk_pool_over_lalloc(o, q, 1000, 0);               /* past the kept sizes: back to f */
  CHECK(mk_pool_used() == u0 + 5000);
  /* The limit: 1 MiB more, and the reserve's 8 above it once spent */
  CHECK(mk_pool_reserve() == 1);
  mk_pool_set_limit(mk_pool_used() + ((size_t)1 << 20));
  while (n < 64 && (big[n] = mk_pool_over_lalloc(o, NULL, 4, (size_t)1 << 19)) != NULL) n++;
  CHECK(n >= 17 && n <= 18);                        /* 9 MiB in halves */
  for (i = 0; i < n; i++) mk_pool_over_lalloc(o, big[i], (size_t)1 << 19, 0);
  mk_pool_set_limit(0);
  CHECK(mk_pool_reserve() == 1);
  CHECK(mk_pool_used() == u0 + 4900);               /* p, kept, went back to f for room */
  mk_pool_over_free(o);                             /* no longer counted */
  CHECK(mk_pool_used() == u0);
  mk_pool_unreserve();
}

/* The cgroup's memory limit, read from a tree made here: the least of the
** group's and its parents' (v2), the memory controller's (v1), none. */
/* A library's memory (mk_pool_lib_malloc: OpenSSL's) is in the count, on
** any thread, and never refused; a Lua request past the limit meets it;
** realloc to 0 frees. */
static void *lib_churn(void *arg) {
  void *p[64] = {0};
  int i;
  (void)arg;
  for (i = 0; i < 20000; i++) {
    int k = i % 64;
    mk_pool_lib_free(p[k]);
    p[k] = mk_pool_lib_malloc(16 + (size_t)(i % 200));
    if (i % 7 == 0) p[k] = mk_pool_lib_realloc(p[k], 300 + (size_t)(i % 3000));
  }
  for (i = 0; i < 64; i++) mk_pool_lib_free(p[i]);
  return NULL;
}

static void limit_counts_libraries (void) {
  pthread_t t[4];
  size_t u0, i;
  void *p, *q;
  mk_pool_trim();
  mk_pool_unreserve();
  u0 = mk_pool_used();
  p = mk_pool_lib_malloc(5000);
  CHECK(p != NULL && mk_pool_used() >= u0 + 5000 && mk_pool_used() < u0 + 5100);
  q = mk_pool_lib_realloc(p, 50000);
  CHECK(q != NULL && mk_pool_used() >= u0 + 50000 && mk_pool_used() < u0 + 50100);
  mk_pool_set_limit(mk_pool_used() + 1000);
  p = mk_pool_lib_malloc(100000);                 /* past the limit: never refused */
  CHECK(p != NULL);
  CHECK(mk_pool_lalloc(NULL, NULL, 4, 100000) == NULL);   /* Lua's is, then */
  mk_pool_set_limit(0);
  mk_pool_lib_free(p);
  CHECK(mk_pool_lib_realloc(q, 0) == NULL);
  CHECK(mk_pool_used() == u0);
  mk_pool_lib_free(NULL);
  p = mk_pool_lib_realloc(NULL, 100);
  CHECK(p != NULL && mk_pool_used() >= u0 + 100);
  mk_pool_lib_free(p);
  for (i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, lib_churn, NULL) == 0);
  for (i = 0; i < 4; i++) pthread_join(t[i], NULL);
  CHECK(mk_pool_used() == u0);
}

static void put(const char *dir, const char *rel, const char *text) {
  char path[512];
  FILE *f;
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  f = fopen(path, "w");
  CHECK(f != NULL);
  if (f != NULL) { fputs(text, f); fclose(f); }
}

static void cgroup_memory_max (void) {
  char dir[] = "/tmp/mk-cgroup-XXXXXX", self[600], mount[600], cmd[700];
  CHECK(mkdtemp(dir) != NULL);
  snprintf(self, sizeof self, "%s/self", dir);
  snprintf(mount, sizeof mount, "%s/fs", dir);
  snprintf(cmd, sizeof cmd, "mkdir -p %s/fs/a/b/c %s/fs/memory/x/y", dir, dir);
  CHECK(system(cmd) == 0);
  /* v2: the group's own "max", its parent's 3 MiB, the grandparent's 5 */
  put(dir, "self", "0::/a/b/c\n");
  put(dir, "fs/a/b/c/memory.max", "max\n");
  put(dir, "fs/a/b/memory.max", "3145728\n");
  put(dir, "fs/a/memory.max", "5242880\n");
  CHECK(mk_cgroup_memory_max(self, mount) == 3145728);
  put(dir, "fs/a/b/memory.max", "max\n");
  CHECK(mk_cgroup_memory_max(self, mount) == 5242880);
  /* the path the host sees, which the container's mount does not have:
  ** its own group is the mount's root */
  put(dir, "self", "0::/docker/1234\n");
  CHECK(mk_cgroup_memory_max(self, mount) == 0);
  put(dir, "fs/memory.max", "1048576\n");
  CHECK(mk_cgroup_memory_max(self, mount) == 1048576);
  put(dir, "fs/memory.max", "max\n");
  /* v1: the memory controller's group; "no limit" is a huge number */
  put(dir, "self", "5:cpu,cpuacct:/x\n4:memory:/x/y\n0::/\n");
  put(dir, "fs/memory/x/y/memory.limit_in_bytes", "9223372036854771712\n");
  put(dir, "fs/memory/x/memory.limit_in_bytes", "2097152\n");
  CHECK(mk_cgroup_memory_max(self, mount) == 2097152);
  put(dir, "self", "4:cpu,memory:/x/y\n");
  CHECK(mk_cgroup_memory_max(self, mount) == 2097152);
  put(dir, "fs/memory/x/memory.limit_in_bytes", "garbage\n");
  CHECK(mk_cgroup_memory_max(self, mount) == 0);
  put(dir, "self", "4:cpu:/x/y\n");               /* no memory controller */
  CHECK(mk_cgroup_memory_max(self, mount) == 0);
  snprintf(self, sizeof self, "%s/none", dir);    /* no /proc/self/cgroup */
  CHECK(mk_cgroup_memory_max(self, mount) == 0);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
}

int main (void) {
  RUN(reuse);
  RUN(classes_fit_chunks);
  RUN(large_blocks);
  RUN(large_blocks_hold_the_request);
  RUN(placed_blocks);
  RUN(watch_frees);
  RUN(valgrind_sees_the_cache);
  RUN(keeps_every_block);
  RUN(lua_allocator);
  RUN(over_another);
  RUN(reserve_when_memory_runs_out);
  RUN(limit_counts_blocks);
  RUN(limit_fails_lua_not_the_vm);
  RUN(limit_counts_over_another);
  RUN(limit_counts_libraries);
  RUN(cgroup_memory_max);
  return CHECK_DONE();
}

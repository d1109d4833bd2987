/*
** pool.h: a cache of freed small blocks in front of malloc.
**
** A message through market makes and frees a dozen small objects (terms,
** queued events, and the Lua tables, strings and userdata of the process
** that handles it), and a busy server frees them in bursts of dozens of the
** same size.  glibc's per-size cache holds 7 blocks, so most of these went
** through the slower paths of malloc (and its periodic consolidation).
** This cache keeps every block of up to MK_POOL_MAX bytes given back to
** it, in a plain LIFO free list per size class, until mk_pool_trim.  The
** classes are 24, 40, 56, ... bytes: each block with malloc's header
** fills a 16-byte-aligned chunk exactly.  Larger blocks, up to
** MK_POOL_BIG_MAX, are kept in coarser classes and only up to a bound
** (below).
**
** Keeping every block bounds what a class holds by its high-water mark,
** the most blocks it ever had in use at once, and no more: a new block
** is taken from malloc only when the class has none cached.  A program
** that spawned and killed 100,000 processes keeps their records for the
** next 100,000.  A class used to keep at most 256 KiB and give the rest
** back to malloc; a VM spawning and killing in waves then got its records
** back from glibc's free lists, merged, split and scattered, and spawned
** at less than half the rate of its first wave (issue 10;
** docs/performance.md, "Sustained spawns").  The price: what a class
** keeps serves only its own size, where malloc would reuse the memory a
** burst of one size freed for another.
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

#define MK_POOL_MAX   512            /* the largest block of the small classes */

/* Blocks of more than MK_POOL_MAX and up to MK_POOL_BIG_MAX bytes are
** kept too, in classes of 256 bytes, but only up to MK_POOL_BIG_KEEP
** bytes of them in all (pool.c, "Larger blocks"); larger blocks go
** straight to malloc and free. */
#define MK_POOL_BIG_MAX  65536
#define MK_POOL_BIG_KEEP (1024 * 1024)

/* n bytes (n > 0), or NULL when out of memory. */
void *mk_pool_alloc(size_t n);
/* Free p (NULL is ignored), a block of n bytes from mk_pool_alloc (never
** one from malloc: the limit's count would lose what it never had). */
void mk_pool_free(void *p, size_t n);
/* A lua_Alloc over the cache (ud unused): for Lua states made by market. */
void *mk_pool_lalloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Have fn(block) called for each block of exactly `size` bytes that
** mk_pool_lalloc frees, just before it is freed (fn NULL: no more).  One
** watch for the whole program: lua/lterm.c's, which learns so that a term
** box is gone, and releases its term, without a finalizer per box (a
** finalizer costs the collector about 450 instructions, two per echoed
** round trip; docs/architecture.md, "Boxes without finalizers").  fn
** must not call into Lua nor allocate from it. */
void mk_pool_watch(size_t size, void (*fn)(void *block));
/* How many blocks of more than MK_POOL_MAX bytes mk_pool_lalloc has freed
** or resized so far: while it stays the same, every such block a Lua state
** over it had is still where it was (lua/lterm.c's string cache). */
unsigned long mk_pool_lfrees(void);
/*
** Blocks placed for the processor's cache: n bytes (n > 0) whose byte
** `at` (a field's offset) starts a cache line of 64 bytes, so that the
** fields from `at` on that one event reads come in one line, not in the
** two a 16-byte-aligned malloc block spreads them over half the time.  A
** record read at each of a server's round trips (a process, an endpoint
** from its hot fields on, a connection) at thousands of connections comes
** from memory, a miss per line (issue 10: an echoed round trip at 1,000
** connections, 21.1 misses of the last-level cache -> 17.3).  The block
** takes whole lines: up to 63 bytes more than malloc's.  Blocks of up to
** 512 bytes with their lead are carved from slabs and kept when freed,
** like the small classes; mk_pool_trim frees the slabs only once no block
** of them is in use.  NULL when out of memory.  Freed with mk_pool_free_at
** and the same n and at; never with free or mk_pool_free.  Under
** AddressSanitizer each is an aligned_alloc of its own.
*/
void *mk_pool_alloc_at(size_t n, size_t at);
void mk_pool_free_at(void *p, size_t n, size_t at);
/* Bytes now cached (allocated from malloc, free for reuse). */
size_t mk_pool_cached(void);
/* Give every cached block back to malloc (mk_pool_alloc_at's slabs only
** when none of their blocks is in use). */
void mk_pool_trim(void);
/*
** malloc, calloc and realloc, tried once more after mk_pool_trim when
** they fail (the pool's own calls to malloc do the same).  What the
** cache keeps serves only its own class: a process killed for running
** out of memory leaves its heap and its queued events here, and the VM,
** another process or libev asking for a block of another size must find
** that memory in malloc again, not abort beside it (mk_pool_over drains
** so for a host's allocator).  NULL when memory is out even so.
*/
void *mk_pool_malloc(size_t n);
void *mk_pool_calloc(size_t n, size_t size);
void *mk_pool_realloc(void *p, size_t n);

/*
** The reserve: MK_POOL_RESERVE bytes taken from malloc and never touched
** (no resident memory), given back when an allocation fails even after
** the cache's blocks went back (the calls above, and the pool's own), if
** the request is no larger than the reserve (a larger one just fails).
** The program then has room to finish the event it was handling and to
** end the process whose event ran memory out (vm.c, mk_vm_step), where it
** would have aborted in the VM's C code or libev's.  mk_pool_nspent
** counts the times it was spent (read it; only pool.c writes it).
** mk_pool_reserve takes it (again): 1 when held, 0 when memory is still
** too short (the ground tries at each turn while it is spent);
** mk_pool_unreserve gives it back for good (the last ground's end).
*/
#define MK_POOL_RESERVE ((size_t)8 << 20)
extern unsigned long mk_pool_nspent;
int mk_pool_reserve(void);
void mk_pool_unreserve(void);

/*
** The memory limit: under a cgroup's limit (a container's, systemd's
** MemoryMax) malloc never fails, and the kernel kills the whole program
** when it is reached.  With a limit set, the pool treats `bytes` as the
** end of memory: the request that would take what it counts past it is
** handled as one malloc refused (the cache given back, then the reserve
** spent: the process whose event it was ends with "not enough memory",
** alone), and a Lua state's request past the limit and the reserve fails
** as in Lua (a collection, then the error "not enough memory"); the VM's
** own requests never fail for the limit, and take from the margin that
** should be left between it and the machine's.
**
** What is counted (mk_pool_used): every malloc block the pool holds for
** mk_pool_alloc, mk_pool_alloc_at and mk_pool_lalloc, in use or cached;
** so the Lua states on mk_pool_lalloc (the interpreter's, a C host's
** made by mk_host_new), terms, queued events (and the queues' blocks:
** mk_pool_map), processes, endpoints and routing nodes, and what
** libraries hold through mk_pool_lib_malloc (OpenSSL's: its sessions and
** buffers, drivers/tls.c).  Not counted: the malloc, calloc and realloc
** above (tables of the VM and the drivers), other libraries' own (libev,
** libnats), a Lua state another host made (lua5.4's) unless its cache
** counts (mk_pool_over_count: a ground VM on it does), code and stacks.
** 0, the default: no limit.  The count costs nothing on a block the
** cache hands out or takes back.
*/
void mk_pool_set_limit(size_t bytes);
size_t mk_pool_limit(void);
size_t mk_pool_used(void);
/* Memory a VM maps for itself (its queue's blocks, vm.c), counted as the
** pool's blocks are: mk_pool_map before n bytes are mapped (never fails:
** past the limit, the reserve is spent as for the VM's own requests),
** mk_pool_unmap once they are unmapped. */
void mk_pool_map(size_t n);
void mk_pool_unmap(size_t n);
/* malloc, realloc and free for a library's own memory, counted as the
** pool's blocks are (mk_pool_used) but never refused for the limit: a
** library may call them on threads of its own (libnats's), where the
** limit can do nothing but count; past it, the next request of the pool's
** own meets it.  A block from them may also go to plain free (it is
** malloc's): the count then keeps its bytes. */
void *mk_pool_lib_malloc(size_t n);
void *mk_pool_lib_realloc(void *p, size_t n);
void mk_pool_lib_free(void *p);
/* The memory limit of the control group this program runs in, in bytes:
** the least of its own group's and its parents' (cgroup v2 memory.max,
** v1 memory.limit_in_bytes); 0 when there is none or it cannot be read.
** self and mount are where to read (NULL: /proc/self/cgroup and
** /sys/fs/cgroup; a test gives a tree of its own).  runtime/cgroup.c. */
size_t mk_cgroup_memory_max(const char *self, const char *mount);

/*
** A cache in front of another allocator: a lua_Alloc (its shape, without
** lua.h) that keeps the blocks freed through it and hands them out again,
** over the allocator f (with its ud) that a Lua state had.  A Lua state
** made by another host (lua5.4's own, realloc and free) gets one while a
** ground VM runs on it (lua/lproc.c, mkl_attach): the Lua objects a wave
** of exits leaves to the collector are then the next wave's, not glibc's
** to merge and scatter (docs/performance.md, "Sustained spawns").
**
** Blocks are kept by their exact size, from sizeof(void *) to
** MK_POOL_MAX bytes, and only ever handed out for that size again, so
** every block goes back to f, when it does, as what f lent: right for
** any lua_Alloc, whatever sizes it rounds to.  Every block freed is
** kept, until mk_pool_over_free or mk_pool_over_pass; resizes and larger
** blocks go straight to f.  Not used under AddressSanitizer (the caller
** checks MK_SANITIZED), so that reuse of freed memory is still caught.
*/
typedef void *(*mk_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);
typedef struct mk_pool_over mk_pool_over;
/* A cache over f (NULL when out of memory); mk_pool_over_lalloc with it
** as ud is the allocator to install. */
mk_pool_over *mk_pool_over_new(mk_alloc_fn f, void *ud);
void *mk_pool_over_lalloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* The allocator underneath, and its ud in *ud. */
mk_alloc_fn mk_pool_over_under(const mk_pool_over *o, void **ud);
/* Bytes now kept (lent by f, free for reuse), each block counted as the
** pool's class of its size, as glibc's malloc counts it; 0 for NULL. */
size_t mk_pool_over_cached(const mk_pool_over *o);
/* Every kept block back to f, and from now on every call passed on to f:
** for a cache still installed where it cannot be taken out. */
void mk_pool_over_pass(mk_pool_over *o);
/* Every kept block back to f, and o freed (NULL is ignored): once it is
** no Lua state's allocator. */
void mk_pool_over_free(mk_pool_over *o);
/* From now on, the bytes of the Lua state's blocks are in the memory
** limit's count (mk_pool_used), `already` of them there now (Lua's count:
** lua_gc COUNT and COUNTB), and a request past the limit is handled as a
** Lua state's on mk_pool_lalloc; mk_pool_over_free takes them out. */
void mk_pool_over_count(mk_pool_over *o, size_t already);
#endif

/*
** tcpconn.c: the TCP driver's connection manager, a native process.
**
** One manager per connection (docs/tcp.md): it publishes the inbound flow
** tcp.channel(remote, local, _), subscribes to the outbound flow
** tcp.channel(local, remote, _) (an outbound connection's manager once
** connected: tdial), owns the socket (TCP, or a Unix stream socket), and
** speaks the whole protocol of docs/tcp.md (chunks as read or framed, EOF
** and half-close, output queue with backpressure and a hard limit, idle
** timeout, linger, an orderly close, failures as absence reasons).  Like the rest of the
** driver it is written against ground events only (market:readable /
** writable / alarm subscriptions, added with mk_add_endpoint like any
** process's), never libev, so it runs unchanged in a nested VM whose event
** relay carries those subscriptions up.
**
** It is C rather than Lua because it is the data path: every chunk read
** and every chunk written goes through it.  As a Lua process it cost a
** coroutine activation, an action table and a copy of the payload per
** chunk each way; here a chunk read is one string term sent, and a chunk
** to write is written from the term that carried it.  Framing is here for
** the same reason: done in Lua by the user, splitting a stream into lines
** or length-prefixed frames tends to re-scan or re-copy the buffer per
** chunk, which an abusive peer turns into quadratic work.  Here each byte
** read is looked at once and copied at most twice (into a partial frame,
** then into the frame's term).
**
** Settings.  A manager starts from the module's defaults (tcp.HIGH_WATER,
** ...) and observes the publishers of tcp-options(local, remote, _), whose
** third field is a sequence of {key, value} pairs (tcp.options in
** drivers/tcp.lua builds and checks them): the sets it sees, in the order
** their presence arrived, are laid over the defaults key by key, later
** over earlier.  The observer endpoint is added first, so sets published
** before the connection exists apply from its first byte.
**
** The Lua half of the driver (drivers/tcp.lua) decides when managers are
** spawned, through these market.sys functions, which act on behalf of the
** calling Lua process (they are its spawn actions):
**
**   sys.tcp_accept(lsock, loc, lport, max, maxconn, conns, defaults, stats)
**       -> n [, msg] | nil, msg
**       accept up to max connections on listening socket lsock and spawn a
**       manager for each (remote tcp.address(host, port), local `loc`, the
**       listener's port `lport`); n: how many were taken (fewer than max:
**       nothing more to accept now).  A connection beyond maxconn (0: no
**       cap) open connections counted in `conns` (sys.tcp_conns()) is closed at
**       once, and so is one that arrives when descriptors have run out (a
**       spare descriptor makes room to accept it); each such refusal is
**       counted in stats.refused and sent as tcp.refused(loc, remote,
**       reason).  msg after n: descriptors ran out meanwhile.  nil, msg:
**       accept failed (after n taken).
**   sys.tcp_manage(remote, loc, name, defaults, stats) -> pid
**       spawn the manager of an outbound connection (loc a tcp.handle); it
**       resolves and connects by itself, and publishes its flows once
**       connected (or, failing, only to withdraw them with the reason).
**   sys.tcp_stats() -> stats
**       counters shared by the managers given it: stats.max_queued,
**       stats.pauses, stats.overflows, stats.refused, stats.timeouts,
**       stats.max_input, stats.tls_failures (read and set like table
**       fields).
**   sys.tcp_inspect() -> connections
**       every connection's manager in the program's VMs, for
**       market.tcp.inspect (docs/inspect.md, "Detail mode").
**   sys.tcp_conns() -> conns
**       the number of connections a listener's managers hold open
**       (conns.live), and of those it accepted on a Unix socket
**       (conns.serial: each one's remote is tcp.address(peer path, serial),
**       the serial standing for the port a Unix peer does not have).
**   sys.tcp_settings() -> {key = {lo, hi}, ..., framing = {"raw", ...}}
**       the settings a manager takes and their bounds, for tcp.options.
**   sys.tcp_defaults(settings) -> defaults
**       the settings sequence checked and parsed once, for tcp_accept and
**       tcp_manage (an error if bad or incomplete, as they would raise).
**
** `defaults` is what sys.tcp_defaults made, or a settings sequence like
** tcp-options' third field (parsed at each call).
*/
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <lua.h>
#include <lauxlib.h>

#include "mkl.h"
#include "mkd.h"
#include "pool.h"

#define READ_MAX 65536

/* Output chunks shorter than COPY_MAX are copied into blocks of
** BLOCK_BYTES (header included); longer ones are kept by reference to the
** term that brought them.  Many small string terms would cost their header
** and malloc's overhead each, often more than their bytes. */
#define COPY_MAX 1024
#define BLOCK_BYTES 4096

/* A closing connection reads and discards what the peer still sends, so
** that close() does not answer unread input with a reset, for at most
** this long (or the linger time, if shorter). */
#define DRAIN_MS 2000

/* Closed connections give their memory back to the system (malloc_trim)
** once this much has been freed by them since the last time. */
#define TRIM_AFTER (1 << 20)

/* ---- counters ----------------------------------------------------------- */

/* Counters shared by managers and the Lua side (mkd.h's counter sets):
** tcp.stats, and each listener's count of its live managers. */
enum { C_MAX_QUEUED, C_PAUSES, C_OVERFLOWS, C_REFUSED, C_TIMEOUTS, C_MAX_INPUT, C_TLS_FAILED };
enum { C_LIVE, C_SERIAL };

static const char *const stats_names[] = {
  "max_queued", "pauses", "overflows", "refused", "timeouts", "max_input", "tls_failures", NULL };
static const char *const conns_names[] = { "live", "serial", NULL };

static int l_tcp_stats(lua_State *L) { mkd_newcount(L, "tcp.stats", stats_names); return 1; }
static int l_tcp_conns(lua_State *L) { mkd_newcount(L, "tcp.conns", conns_names); return 1; }

/* ---- settings ------------------------------------------------------------ */

enum { F_RAW, F_LINE, F_U16, F_U32 };
static const char *const framings[] = { "raw", "line", "u16", "u32", NULL };

enum { K_FRAMING, K_MAX_FRAME, K_IDLE, K_MAXCONN, K_HIGH, K_LOW, K_HARD, K_READ, K_LINGER,
       K_CONNECT, K_REUSEPORT, K_READING, K_TLS, NKEYS };

/* The keys of a settings sequence and the integers they take (framing: an
** index into framings[]; reuseport, reading: booleans, as 0 or 1).  They guard against hand-made tcp-options
** records here, and tcp.lua checks the same at the call site: it reads
** them from here (sys.tcp_settings), so there is one list. */
static const struct { const char *name; int64_t lo, hi; } keys[NKEYS] = {
  { "framing", F_RAW, F_U32 },
  { "max_frame", 1, (int64_t)1 << 31 },
  { "idle_timeout", 0, INT64_MAX / 4 },
  { "max_connections", 0, INT64_MAX },
  { "high_water", 1, INT64_MAX / 16 },
  { "low_water", 0, INT64_MAX / 16 },
  { "hard_limit", 0, INT64_MAX / 16 },
  { "read_size", 1, READ_MAX },
  { "linger", 0, INT64_MAX / 4 },
  { "connect_timeout", 0, INT64_MAX / 4 },
  { "reuseport", 0, 1 },       /* the listener's (tcp.lua), not a connection's */
  { "reading", 0, 1 },         /* false: read nothing more (held); unset: true */
  { "tls", 0, 1 },             /* a tcp-tls record (1: tls_config finds it), or false */
};

/* A set of settings: v[k] is meaningful where bit k of `set` is. */
typedef struct tconf {
  int64_t v[NKEYS];
  unsigned set;
} tconf;

/* Whether string term t is exactly the C string s: the whole term, a NUL
** in it included ("framing\0x" is no key). */
static int is_str(const mk_term *t, const char *s) {
  size_t n = strlen(s);
  return t->kind == MK_STR && t->n == n && memcmp(mk_strdata(t), s, n) == 0;
}

/* Read the settings sequence s into *cf.  Returns the name of the first
** entry that is not a known key with a good value (skipped), or NULL. */
static const char *parse_settings(const mk_term *s, tconf *cf) {
  const char *bad = NULL;
  uint32_t i;
  int k;
  memset(cf, 0, sizeof *cf);
  if (s->kind != MK_SEQ) return "(not a sequence)";
  for (i = 0; i < s->n; i++) {
    const mk_term *e = mk_items(s)[i], *key, *val;
    int64_t v;
    if (e->kind != MK_SEQ || e->n != 2 || mk_items(e)[0]->kind != MK_STR) {
      if (!bad) bad = "(not a {key, value} pair)";
      continue;
    }
    key = mk_items(e)[0];
    val = mk_items(e)[1];
    for (k = 0; k < NKEYS && !is_str(key, keys[k].name); k++) {}
    if (k == K_FRAMING && val->kind == MK_STR) {
      for (v = 0; framings[v] && !is_str(val, framings[v]); v++) {}
      if (framings[v] == NULL) v = -1;
    } else if (k == K_REUSEPORT || k == K_READING) {
      v = val->kind == MK_TRUE ? 1 : val->kind == MK_FALSE ? 0 : -1;
    } else if (k == K_TLS) {
      v = mkd_tls_is_config(val) ? 1 : val->kind == MK_FALSE ? 0 : -1;
    } else {
      v = val->kind == MK_INT ? val->v.i : -1;
    }
    if (k == NKEYS || v < keys[k].lo || v > keys[k].hi) {
      if (!bad) bad = mk_strdata(key);
      continue;
    }
    cf->v[k] = v;
    cf->set |= 1u << k;
  }
  return bad;
}

/* sys.tcp_settings() -> {key = {lo, hi}, ..., framing = {"raw", ...}} */
static int l_tcp_settings(lua_State *L) {
  int k, i;
  lua_createtable(L, 0, NKEYS);
  for (k = 0; k < NKEYS; k++) {
    if (k == K_FRAMING) {
      lua_createtable(L, F_U32 + 1, 0);
      for (i = 0; framings[i]; i++) {
        lua_pushstring(L, framings[i]);
        lua_rawseti(L, -2, i + 1);
      }
    } else {
      lua_createtable(L, 2, 0);
      lua_pushinteger(L, (lua_Integer)keys[k].lo);
      lua_rawseti(L, -2, 1);
      lua_pushinteger(L, (lua_Integer)keys[k].hi);
      lua_rawseti(L, -2, 2);
    }
    lua_setfield(L, -2, keys[k].name);
  }
  return 1;
}

/* ---- a connection ------------------------------------------------------- */

/* Ground-event endpoints held (bits of tconn.watching). */
enum { W_RD = 1, W_WR = 2, W_LINGER = 4, W_CONN = 8, W_RESOLVE = 16, W_IDLE = 32, W_MORE = 64,
       W_DIAL = 128, W_LAST = W_DIAL };
static const char *const watch_names[] = { "rd", "wr", "linger", "conn", "resolve", "idle",
                                           "more", "dial" };

/* The tags of the endpoints that hear messages (mk_tag_endpoint): a watch
** its bit, the outbound flow and the listener's closing theirs.  handle()
** tells a message's endpoint by its tag, not by comparing names: two
** strcmp calls per echoed round trip (issue 10). */
enum { T_OUT = 256, T_LISTENER = 512 };

/* A block of the output queue: bytes copied in (t NULL), or a string term
** kept by reference.  Owned by the queue; `held` is what it costs. */
typedef struct oblock {
  struct oblock *next;
  mk_term *t;                 /* owned reference, or NULL */
  size_t off, len;            /* bytes written so far; end of the bytes */
  size_t cap;                 /* of data[] (copied blocks) */
  size_t held;
  char data[];
} oblock;

/* Connecting (outbound only): allocated at the boot, freed with the
** connection, so that an accepted connection does not carry it.
**
** Until the connect completes the manager has no flows (docs/tcp.md,
** "Connecting"): it watches the users through two observers instead,
** "want-in" (publisher of the inbound flow: sees its subscribers) and
** "want-out" (subscriber of the outbound flow: sees its publishers, and
** queues what they send early), counted here, so that it stops
** connecting when they all go. */
typedef struct tdial {
  mkd_resolve_job *job;
  int rfd;                    /* the resolver's pipe, -1 */
  struct addrinfo *numeric;   /* owned: a numeric host's addresses */
  const struct addrinfo *addrs, *ai;   /* the list being tried; the last tried */
  int64_t started;            /* ms (now_ms), when connecting began */
  int64_t timeout_ms;         /* connect_timeout (settings); 0: none */
  int64_t retry_ms;           /* Unix socket: the wait before the next try (queue full) */
  int readers, senders;       /* the users "want-in" / "want-out" see */
  unsigned begun : 1;         /* start_connect ran: started and timeout_ms hold */
  unsigned unix_path : 1;     /* tcp.address(path, "unix") */
  char lasterr[128];
} tdial;

/* The module's defaults as a manager starts from them: shared by the
** managers started while they stay the same (counted references). */
typedef struct tbase {
  uint32_t refs;
  tconf cf;
  lua_State *L;               /* the main thread of the managers' Lua state, for the log */
} tbase;

/* The defaults last handed out, while some manager holds them: the next
** managers share them as long as the module's defaults stay the same. */
static tbase *last_base;

static void base_release(tbase *b) {
  if (b == NULL || --b->refs > 0) return;
  if (b == last_base) last_base = NULL;
  free(b);
}

static int same_conf(const tconf *a, const tconf *b) {
  int k;
  if (a->set != b->set) return 0;
  for (k = 0; k < NKEYS; k++)
    if (a->v[k] != b->v[k]) return 0;
  return 1;
}

/* 320 bytes (issue 10), without padding: 248 and the inbound flow's
** match slot (72).  What a round trip reads or writes comes first, in 56
** bytes, then the slot, whose `wraps` (route.h) ends the first cache line
** and whose entry is the second: the record is placed on a line's
** boundary (pool.h, mk_pool_alloc_at), so a round trip reads two lines of
** it (it was spread over four, then over three where malloc's 16-byte
** alignment put it): with 10,000 busy connections a connection's state
** has left the caches by the time its next chunk comes, and each line it
** touches is a miss.  Then pointers, 64-bit fields, 32-bit ones. */
typedef struct tconn {
  /* the round trip's: a chunk read, a chunk written */
  mk_term *remote;            /* tcp.address(host, port) */
  mk_term *loc;               /* tcp.listener(port) | tcp.handle(id) */
  oblock *qhead;              /* output queue: first block, or NULL */
  int64_t idle_ms;            /* (settings, below) */
  int64_t last_io;            /* ms, when bytes last moved (idle timeout) */
  int fd;                     /* -1: none (yet, or any more) */
  uint32_t readsize : 17;     /* at most READ_MAX (settings) */
  uint32_t lastread : 9;      /* the last chunk read, in 256 bytes rounded up
                              ** (at most READ_MAX / 256): on_readable */
  uint8_t framing;            /* F_* (settings) */
  uint8_t watching;           /* W_* */
  unsigned seen : 1, connected : 1, paused : 1, eof_in : 1, eof_out : 1, closing : 1,
           secure : 1, done : 1;    /* secure: speaks TLS (tls below) */
  unsigned in_failed : 1;     /* the inbound flow was withdrawn with a reason */
  unsigned more : 1;          /* ib may hold whole frames not yet delivered */
  unsigned eof_queued : 1;    /* shut down writing once the queue is written */
  unsigned shut : 1;          /* writing is shut down */
  unsigned out_gone : 1;      /* the outbound flow was withdrawn */
  unsigned draining : 1;      /* written and shut down: discarding input until EOF */
  unsigned flows : 1;         /* the flows are published (outbound: once connected) */
  unsigned held : 1;          /* reading = false: nothing more is read (settings) */
  uint32_t max_frame;         /* at most 2^31 (keys[]; here, it fills the hole) */
  mk_match_slot inslot;       /* the inbound flow's matches (route.h): its
                              ** chunks have the same remote and local each
                              ** time, and a server's thousands of connections
                              ** would each look in the match cache's table */
  /* the rest */
  mk_term *lport;             /* inbound: the listener's port; NULL: outbound */
  mk_term *rd;                /* market:readable(fd) */
  mk_term *wr;                /* market:writable(fd), made when first watched */
  /* settings: the module's defaults (a counted reference), the option
  ** sets seen (their refined topics, owned, in presence order: parsed
  ** again by reconfigure, which runs only when they come and go), and
  ** what they come to (high ... linger_ms; idle_ms, readsize, framing
  ** and max_frame above) */
  tbase *base;
  mk_term **opts;
  mkd_count *stats;              /* counted reference, or NULL */
  mkd_count *conns;              /* counted reference (inbound) while the socket is
                              ** open, or NULL: the listener's live connections */
  oblock *qtail;              /* output queue: last block */
  /* framed input left over (see "framing" below): malloc'd, icap bytes */
  char *ib;
  tdial *dial;                /* owned: connecting (outbound), or NULL */
  mkd_tls *tls;               /* owned: the TLS session (tls.c), or NULL: plain */
  size_t high, low, hard;
  int64_t linger_ms;
  size_t qbytes;              /* bytes held by the queue (blocks and terms) */
  size_t overrun;             /* bytes queued while paused */
  size_t peak;                /* the most memory this connection held */
  size_t ioff, iscan, ilen, icap;
  uint16_t nopts, optcap;     /* (a set past 65,535 is ignored: options_changed) */
  /* (here, not among the round trip's bits above, whose word is full) */
  unsigned warned : 1;        /* a non-string subpacket was logged (warn_once) */
  unsigned tls_done : 1;      /* TLS: the handshake is over */
  unsigned tls_rw : 1;        /* TLS: a read waits for the socket to be writable */
  unsigned tls_wr : 1;        /* TLS: a write waits for it to be readable */
  unsigned inset : 1;         /* in the set of accepted flows (flowset) */
  int readers, senders;       /* peers on the inbound / outbound flow */
} tconn;

_Static_assert(offsetof(tconn, inslot) + offsetof(mk_match_slot, e) == 64,
               "a connection's slot entry is its second cache line");
_Static_assert(sizeof(tconn) <= 5 * 64, "a connection's record fits five cache lines");

static char rbuf[READ_MAX];
static mk_rtype *channel_rt;  /* tcp-channel/3, held while some manager lives */
static size_t trim_credit;    /* bytes freed by closed connections since the last trim */

/* Terms that connections made one after another mostly have equal: the
** alarm of an idle timeout (rounded, see arm_idle) and the peer's host.
** One copy is shared, held while some manager lives (nmanagers), instead
** of a copy per connection (issue 10). */
static mk_term *shared_alarm, *shared_host;
static size_t nmanagers;

static void shared_release(void) {
  if (nmanagers > 0) return;
  mk_unref(shared_alarm);
  mk_unref(shared_host);
  shared_alarm = shared_host = NULL;
  if (channel_rt) mk_rtype_unref(channel_rt);
  channel_rt = NULL;
}

/* A new reference to the string term host. */
static mk_term *host_term(const char *host) {
  if (shared_host == NULL || strcmp(mk_strdata(shared_host), host) != 0) {
    mk_unref(shared_host);
    shared_host = mk_cstr(host);
  }
  return mk_ref(shared_host);
}

/*
** The accepted TCP connections whose manager lives, by the terms that
** name their flows (the listener and the remote address): a set of
** open addressing, linear probing, a deletion shifting back what follows
** it.  A second connection from the same address and port to the same
** listener (a client that connects again from its port right after a
** reset, before the first manager has seen it; a NAT that gives the port
** to another host) would publish the same flows as the first: each
** side's sessions would read the other's bytes and write into its
** socket.  It is refused while the first one's manager lives (accept).
** Unix sockets' peers are numbered apart, and need none of this.  The
** slots are the set's (malloc'd); the connections are their managers'.
*/
static tconn **flowset;
static size_t nflows, flowcap;      /* flowcap: 0 or a power of two */

static uint32_t flow_hash(const mk_term *loc, const mk_term *remote) {
  return mk_hash(remote) * 31u + mk_hash(loc);
}

/* The slot of the connection whose flows are (loc, remote), or of the
** empty slot where it would go. */
static size_t flow_slot(const mk_term *loc, const mk_term *remote) {
  size_t i = flow_hash(loc, remote) & (flowcap - 1);
  while (flowset[i] != NULL &&
         !(mk_equal(flowset[i]->remote, remote) && mk_equal(flowset[i]->loc, loc)))
    i = (i + 1) & (flowcap - 1);
  return i;
}

static int flow_taken(const mk_term *loc, const mk_term *remote) {
  return nflows > 0 && flowset[flow_slot(loc, remote)] != NULL;
}

/* Room for one more: 0, or -1 when out of memory (the connection is then
** not taken). */
static int flow_room(void) {
  if (2 * (nflows + 1) > flowcap) {
    size_t cap = flowcap ? 2 * flowcap : 64, i;
    tconn **old = flowset, **n = calloc(cap, sizeof *n);
    if (n == NULL) return -1;
    flowset = n;
    for (i = 0; i < flowcap; i++)
      if (old[i] != NULL) {
        size_t j = flow_hash(old[i]->loc, old[i]->remote) & (cap - 1);
        while (n[j] != NULL) j = (j + 1) & (cap - 1);
        n[j] = old[i];
      }
    free(old);
    flowcap = cap;
  }
  return 0;
}

/* Add c, for which flow_room made room. */
static void flow_add(tconn *c) {
  flowset[flow_slot(c->loc, c->remote)] = c;
  nflows++;
  c->inset = 1;
}

static void flow_remove(tconn *c) {
  size_t i, j, k;
  if (!c->inset) return;
  c->inset = 0;
  i = flow_slot(c->loc, c->remote);
  flowset[i] = NULL;
  /* Shift back each later entry of the run that its home slot allows. */
  for (j = (i + 1) & (flowcap - 1); flowset[j] != NULL; j = (j + 1) & (flowcap - 1)) {
    k = flow_hash(flowset[j]->loc, flowset[j]->remote) & (flowcap - 1);
    if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) {
      flowset[i] = flowset[j];
      flowset[j] = NULL;
      i = j;
    }
  }
  if (--nflows == 0) {
    free(flowset);
    flowset = NULL;
    flowcap = 0;
  }
}

static mk_rtype *rtype(const char *label, uint32_t arity, const char *const *names) {
  return mk_rtype_get(label, strlen(label), arity, names);
}

static const char *const channel_fields[] = { "source", "destination", "subpacket" };

/* tcp.channel(a, b, c), with c stolen. */
static mk_term *channel(mk_term *a, mk_term *b, mk_term *sub) {
  return mk_rec(channel_rt, mk_ref(a), mk_ref(b), sub);
}

static mk_term *ground1(mk_rtype *rt, int64_t v) { return mk_rec(rt, mk_int(v)); }

/* Monotonic milliseconds, the clock of market:monotonic_alarm (and of
** mk_ground_clock): idle, linger and connect timeouts are durations, and
** setting the wall clock must neither fire them early nor hold them
** back.  The coarse clock, where there is one, costs next to nothing: it
** stamps every chunk of a connection with an idle timeout. */
static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t stamp_ms(void) {
#ifdef CLOCK_MONOTONIC_COARSE
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#else
  return now_ms();
#endif
}

static int bitindex(int bit) {
  int i;
  for (i = 0; (1 << i) != bit; i++) {}
  return i;
}

static void watch(mk_proc *p, tconn *c, int bit, mk_term *topic) {
  mk_role r;
  if (c->watching & bit) return;
  c->watching |= (uint8_t)bit;
  r.orientation = MK_SUBSCRIBER;
  r.interest = MK_PARTICIPANT;
  r.topic = topic;
  mk_add_endpoint_tagged(p, watch_names[bitindex(bit)], r, (uint32_t)bit, 0);
}

static void unwatch(mk_proc *p, tconn *c, int bit) {
  if (!(c->watching & bit)) return;
  c->watching &= (uint8_t)~bit;
  mk_delete_endpoint(p, watch_names[bitindex(bit)], 0, NULL);
}

/* Watch market:monotonic_alarm(at) under `bit`.  A ground watch is shared by equal
** topics and fires once.  In the ground VM a subscriber that joins an
** alarm that has fired is told at once (ground.c), but through an event
** relay it is not: the relay holds one subscription above per distinct
** alarm and forwards only what arrives after, so a manager in a nested VM
** that joined a fired alarm would wait for ever.  Callers therefore only
** ask for times still ahead (at > now_ms()). */
static void watch_alarm(mk_proc *p, tconn *c, int bit, int64_t at) {
  mk_term *t = shared_alarm;
  if (t == NULL || t->v.rt != mk_ground_monotonic_alarm || mk_items(t)[0]->v.i != at) {
    mk_unref(shared_alarm);
    shared_alarm = t = ground1(mk_ground_monotonic_alarm, at);   /* NULL: the endpoint fails */
  }
  watch(p, c, bit, t);
}

static void set_fd(tconn *c, int fd) {
  mk_unref(c->rd);
  mk_unref(c->wr);
  c->rd = c->wr = NULL;
  c->fd = fd;
  if (fd >= 0) c->rd = ground1(mk_ground_readable, fd);
}

/* Watch the socket's writability: most connections never have to (their
** writes complete at once), so the topic is made when first needed. */
static void watch_writable(mk_proc *p, tconn *c, int bit) {
  if (c->wr == NULL) c->wr = ground1(mk_ground_writable, c->fd);
  watch(p, c, bit, c->wr);
}

static void close_resolver(tconn *c) {
  tdial *d = c->dial;
  if (d == NULL) return;
  if (d->job) { mkd_resolve_release(d->job); d->job = NULL; }
  /* After the release: the thread writes no more. */
  if (d->rfd >= 0) { mkd_close_watched(d->rfd); d->rfd = -1; }
}

static void note_held(tconn *c) {
  size_t h = c->qbytes + c->icap;
  if (h > c->peak) c->peak = h;
}

static void free_input(tconn *c) {
  free(c->ib);
  c->ib = NULL;
  c->ioff = c->iscan = c->ilen = c->icap = 0;
  c->more = 0;
}

static void free_queue(tconn *c) {
  oblock *b, *next;
  for (b = c->qhead; b != NULL; b = next) {
    next = b->next;
    mk_unref(b->t);
    free(b);
  }
  c->qhead = c->qtail = NULL;
  c->qbytes = 0;
}

/* The socket is closed: the connection leaves its listener's count
** (max_connections) now, not when the process record goes. */
static void leave_count(tconn *c) {
  if (c->conns == NULL) return;
  c->conns->v[C_LIVE]--;
  mkd_count_release(c->conns);
  c->conns = NULL;
}

/* A publisher of the inbound flow, tcp.channel(remote, local, _), named
** `in`, and a subscriber to the outbound one, tcp.channel(local, remote,
** _), named `out`, both with `interest`. */
static void add_pair(mk_proc *p, tconn *c, const char *in, const char *out,
                     mk_interest interest) {
  mk_term *w = mk_wild();
  mk_role r;
  r.interest = interest;
  r.orientation = MK_PUBLISHER;
  r.topic = channel(c->remote, c->loc, w);
  mk_add_endpoint(p, in, 0, r);
  mk_unref(r.topic);
  r.orientation = MK_SUBSCRIBER;
  r.topic = channel(c->loc, c->remote, w);
  mk_add_endpoint_tagged(p, out, r, T_OUT, 0);
  mk_unref(r.topic);
}

/* Publish the flows.  An accepted connection does so at once, an outbound
** one once connected (tdial). */
static void add_flows(mk_proc *p, tconn *c) {
  c->flows = 1;
  add_pair(p, c, "in", "out", MK_PARTICIPANT);
}

/* Stop watching, then close (never the other way round: the fd number may
** be reused at once), then quit with reason (NULL: normal).  Another
** process may share the watch (a subscription to the same record): the
** close tells the ground, so its watch fails instead of outliving the
** descriptor (mkd_close_watched).  An outbound connection that never
** connected publishes its flows first, so that its users see them go
** with the reason (their absence: "connection refused", ...), and the
** driver, which counts managers by their inbound flow, sees it go too.
** An accepted connection without flows (its TLS handshake failed) goes
** unseen: nobody took it. */
static void finish(mk_proc *p, tconn *c, const char *reason) {
  int bit;
  mk_term *r;
  if (c->done) return;
  if (!c->flows && c->lport == NULL) add_flows(p, c);
  for (bit = 1; bit <= W_LAST; bit <<= 1) unwatch(p, c, bit);
  close_resolver(c);
  if (c->fd >= 0) { mkd_close_watched(c->fd); set_fd(c, -1); }
  leave_count(c);
  c->done = 1;
  r = reason ? mk_cstr(reason) : NULL;
  mk_quit(p, 0, r);
  mk_unref(r);
}

static void finish_errno(mk_proc *p, tconn *c, int err) {
  char buf[128];
  finish(p, c, mkd_strerror(err, buf, sizeof buf));
}

static void update_reading(mk_proc *p, tconn *c) {
  if (c->secure && !c->tls_done && !c->draining) return;   /* the handshake's watch */
  if (c->draining || (c->secure && c->tls_wr) ||
      (c->connected && !c->eof_in && !c->closing && !c->in_failed && c->readers > 0 && !c->held))
    watch(p, c, W_RD, c->rd);
  else
    unwatch(p, c, W_RD);
}

static void peers_changed(mk_proc *p, tconn *c);

/* Withdraw the inbound flow with `reason`: its readers see the absence;
** the outbound flow stays, so the session can still answer (a goodbye),
** and the connection closes when the session goes. */
static void fail_inbound(mk_proc *p, tconn *c, const char *reason) {
  mk_term *r;
  if (c->in_failed) return;
  c->in_failed = 1;
  free_input(c);
  r = mk_cstr(reason);
  mk_delete_endpoint(p, "in", 0, r);
  mk_unref(r);
  c->readers = 0;            /* their absence events went with the endpoint */
  peers_changed(p, c);
}

/* The flows go, with reason (NULL: normal); their peers see the absence. */
static void withdraw_flows(mk_proc *p, tconn *c, const char *reason) {
  mk_term *r = reason ? mk_cstr(reason) : NULL;
  if (!c->in_failed) mk_delete_endpoint(p, "in", 0, r);
  if (!c->out_gone) mk_delete_endpoint(p, "out", 0, r);
  mk_unref(r);
  c->in_failed = c->out_gone = 1;
  c->readers = c->senders = 0;
}

/* ---- framing ------------------------------------------------------------ */

/*
** Framed input (framing "line", "u16" or "u32") keeps the bytes read and
** not yet delivered in ib[ioff..ilen): a partial frame, or, when one read
** brought more than FRAME_BUDGET frames, the rest of that read (`more`).
** A manager delivers at most FRAME_BUDGET frames per event, and reads
** nothing while it has some left over: a peer sending a stream of tiny
** frames (a 64 KiB read holds 32,768 empty u16 frames) then holds up the
** others for one batch between polls, not for the whole read.  What is
** left waits for the socket's next readiness, or, when the peer has sent
** nothing more, for an alarm a millisecond later.  Each byte is copied
** into ib at most once and compacted away in amortised constant time;
** for lines, ib[ioff..iscan) is known to hold no "\n".  ib grows with the
** bytes that arrive (reserve), so a partial frame holds about what the
** peer sent, whatever length it announced.
*/
#define FRAME_BUDGET 128

/* The chunk s (a string term, stolen) sent on the inbound flow.  NULL:
** memory ran out making it, and the flow fails (a nil for the chunk
** would lose its bytes without a word). */
static void deliver_term(mk_proc *p, tconn *c, mk_term *s) {
  mk_term *m;
  if (s == NULL) { fail_inbound(p, c, "out of memory"); return; }
  m = channel(c->remote, c->loc, s);
  mk_send_slot(p, m, &c->inslot);
  mk_unref(m);
}

static void deliver(mk_proc *p, tconn *c, const char *s, size_t n) {
  deliver_term(p, c, mk_str(s, n));
}

static size_t prefix_len(const tconn *c) { return c->framing == F_U16 ? 2 : 4; }

static size_t get_len(const char *p, size_t hdr) {
  const unsigned char *s = (const unsigned char *)p;
  return hdr == 2 ? (size_t)s[0] << 8 | s[1]
                  : (size_t)s[0] << 24 | (size_t)s[1] << 16 | (size_t)s[2] << 8 | s[3];
}

/* Where in ib the frame that starts at ioff ends, once its length is
** there; 0 when that is not known (lines, or a length not all read). */
static size_t frame_end(const tconn *c) {
  size_t hdr;
  if (c->framing != F_U16 && c->framing != F_U32) return 0;
  hdr = prefix_len(c);
  if (c->ilen - c->ioff < hdr) return 0;
  return c->ioff + hdr + get_len(c->ib + c->ioff, hdr);
}

/* Room for n bytes in ib; -1 when out of memory (the inbound flow has
** failed then).  Grows by doubling (amortised linear), but not past the
** end of the frame being collected when n is within it: the room follows
** the bytes that came, within a factor of two, never the length a peer
** announced (a 2-byte header saying 65535 must not cost 64 KiB).  Once a
** growth stops at the frame's end, the frame needs no more. */
static int reserve(mk_proc *p, tconn *c, size_t n) {
  size_t cap = c->icap ? c->icap : 256, end = frame_end(c);
  char *nb;
  if (n <= c->icap) return 0;
  while (cap < n) cap *= 2;
  if (n <= end && end < cap) cap = end;
  nb = realloc(c->ib, cap);
  if (nb == NULL) { fail_inbound(p, c, "out of memory"); return -1; }
  c->ib = nb;
  c->icap = cap;
  note_held(c);
  if (c->stats && (lua_Integer)cap > c->stats->v[C_MAX_INPUT])
    c->stats->v[C_MAX_INPUT] = (lua_Integer)cap;
  return 0;
}

static int append(mk_proc *p, tconn *c, const char *s, size_t n) {
  if (reserve(p, c, c->ilen + n) != 0) return -1;
  memcpy(c->ib + c->ilen, s, n);
  c->ilen += n;
  return 0;
}

/* Forget what was delivered: the rest moves to the front only when it is
** no longer than what went (so moving costs less than delivering did),
** and a large buffer is freed once empty. */
static void compact(tconn *c) {
  size_t rest = c->ilen - c->ioff;
  if (c->ioff == 0) return;
  if (rest == 0) {
    c->ilen = c->ioff = c->iscan = 0;
    if (c->icap > 4096) free_input(c);
  } else if (rest <= c->ioff) {
    memmove(c->ib, c->ib + c->ioff, rest);
    c->iscan = c->iscan > c->ioff ? c->iscan - c->ioff : 0;
    c->ilen = rest;
    c->ioff = 0;
  }
}

static void line_too_long(mk_proc *p, tconn *c) {
  char buf[96];
  snprintf(buf, sizeof buf, "line longer than %zu bytes", (size_t)c->max_frame);
  fail_inbound(p, c, buf);
}

/* A whole line s[0..n) (its "\n" not included): without a "\r" at its
** end, unless longer than max_frame.  Returns -1 when it was too long. */
static int deliver_line(mk_proc *p, tconn *c, const char *s, size_t n) {
  if (n > 0 && s[n - 1] == '\r') n--;
  if (n > c->max_frame) { line_too_long(p, c); return -1; }
  deliver(p, c, s, n);
  return 0;
}

/* Returns -1 (and fails the inbound flow) when len is over max_frame. */
static int check_len(mk_proc *p, tconn *c, size_t len) {
  char buf[128];
  if (len <= c->max_frame) return 0;
  snprintf(buf, sizeof buf, "frame of %zu bytes is longer than max_frame (%zu)", len,
           (size_t)c->max_frame);
  fail_inbound(p, c, buf);
  return -1;
}

/* Frames straight from s[0..n) (bytes just read, nothing left over before
** them), while *budget lasts: the bytes used.  The inbound flow may have
** failed. */
static size_t direct(mk_proc *p, tconn *c, const char *s, size_t n, int *budget) {
  size_t used = 0, hdr, len;
  if (c->framing == F_LINE) {
    const char *nl;
    while (*budget > 0 && (nl = memchr(s + used, '\n', n - used)) != NULL) {
      if (deliver_line(p, c, s + used, (size_t)(nl - (s + used))) != 0) return n;
      used = (size_t)(nl - s) + 1;
      --*budget;
    }
    return used;
  }
  hdr = prefix_len(c);
  while (*budget > 0 && n - used >= hdr) {
    len = get_len(s + used, hdr);
    if (check_len(p, c, len) != 0) return n;
    if (n - used - hdr < len) break;
    deliver(p, c, s + used + hdr, len);
    used += hdr + len;
    --*budget;
  }
  return used;
}

/* Frames from ib, while the budget lasts; `more` tells whether the budget
** ran out first. */
static void from_buffer(mk_proc *p, tconn *c, int budget) {
  size_t hdr = prefix_len(c), avail, len;
  while (budget > 0 && c->ioff < c->ilen) {
    if (c->framing == F_LINE) {
      char *nl = memchr(c->ib + c->iscan, '\n', c->ilen - c->iscan);
      size_t next;
      if (nl == NULL) { c->iscan = c->ilen; break; }
      next = (size_t)(nl - c->ib) + 1;
      if (deliver_line(p, c, c->ib + c->ioff, next - 1 - c->ioff) != 0) return;
      c->ioff = c->iscan = next;
    } else {
      avail = c->ilen - c->ioff;
      if (avail < hdr) break;
      len = get_len(c->ib + c->ioff, hdr);
      if (check_len(p, c, len) != 0) return;
      if (avail - hdr < len) break;      /* (room comes as the bytes do) */
      deliver(p, c, c->ib + c->ioff + hdr, len);
      c->ioff += hdr + len;
    }
    budget--;
  }
  c->more = budget == 0 && c->ioff < c->ilen;
  /* A partial line is bounded before it is complete (it may still end in
  ** "\r\n"). */
  if (!c->more && c->framing == F_LINE) {
    size_t partial = c->ilen - c->ioff;
    if (partial > c->max_frame + 1 ||
        (partial == c->max_frame + 1 && c->ib[c->ilen - 1] != '\r')) {
      line_too_long(p, c);
      return;
    }
  }
  compact(c);
}

/* After input was handled: an alarm to go on with what is left when the
** socket may have nothing more to say. */
static void update_more(mk_proc *p, tconn *c) {
  if ((c->more || (c->secure && c->tls_done && mkd_tls_pending(c->tls) > 0)) &&
      c->readers > 0 && !c->in_failed && !c->closing && !c->done) {
    if (!(c->watching & W_MORE)) watch_alarm(p, c, W_MORE, now_ms() + 1);
  } else {
    unwatch(p, c, W_MORE);
  }
}

/* Deliver what is left over, as far as the budget goes (nothing while
** nobody reads: what is sent to nobody is lost). */
static void pump(mk_proc *p, tconn *c) {
  if (c->in_failed || c->readers == 0) { update_more(p, c); return; }
  if (c->framing == F_RAW) {
    if (c->ioff < c->ilen) deliver(p, c, c->ib + c->ioff, c->ilen - c->ioff);
    c->more = 0;
    free_input(c);
    c->ioff = c->iscan = 0;
  } else {
    from_buffer(p, c, FRAME_BUDGET);
  }
  update_more(p, c);
}

/* Bytes just read, as the connection's framing wants them. */
/* (inlined into both readers: out of line, the echoed round trip paid
** some 40 instructions more in calls and spills) */
static inline __attribute__((always_inline)) void received(mk_proc *p, tconn *c, const char *d,
                                                          size_t n) {
  int budget = FRAME_BUDGET, scanned = 0;
  size_t used = 0;
  if (c->framing == F_RAW) { deliver(p, c, d, n); return; }
  if (c->ioff == c->ilen) {
    c->ioff = c->ilen = c->iscan = 0;
    used = direct(p, c, d, n, &budget);
    if (c->in_failed || used == n) return;
    scanned = budget > 0;      /* it stopped at a partial frame */
    if (scanned && c->framing == F_LINE && n - used > c->max_frame + 1) {
      line_too_long(p, c);     /* (no need to keep it to know) */
      return;
    }
  }
  if (append(p, c, d + used, n - used) != 0) return;
  if (scanned) c->iscan = c->ilen;     /* (lines: no "\n" in it) */
  from_buffer(p, c, budget);
  update_more(p, c);
}

/* The framing or max_frame changed: what is left over is framed again. */
static void reframe(mk_proc *p, tconn *c) {
  if (c->ioff == c->ilen || c->in_failed) return;
  c->iscan = c->ioff;
  c->more = 1;
  pump(p, c);
}

/* The peer's end of stream (read only when nothing whole is left over):
** the last unfinished line, then EOF; a frame cut short, or a last line
** over max_frame, fails the flow instead. */
static void end_of_input(mk_proc *p, tconn *c) {
  mk_term *m;
  size_t partial = c->ilen - c->ioff;
  c->eof_in = 1;
  update_reading(p, c);
  if (partial > 0 && c->framing == F_LINE) {
    /* (from_buffer let it be one byte over, a "\r" that a "\n" might
    ** have followed: none came, and the "\r" is the line's) */
    if (partial > c->max_frame) { line_too_long(p, c); return; }
    deliver(p, c, c->ib + c->ioff, partial);
  } else if (partial > 0) {
    char buf[128];
    size_t hdr = prefix_len(c);
    if (partial < hdr)
      snprintf(buf, sizeof buf, "end of stream inside a frame's length");
    else
      snprintf(buf, sizeof buf, "end of stream inside a frame (%zu of %zu bytes)",
               partial - hdr, get_len(c->ib + c->ioff, hdr));
    fail_inbound(p, c, buf);
    return;
  }
  free_input(c);
  c->ioff = c->iscan = 0;
  m = channel(c->remote, c->loc, mk_eof());
  mk_send(p, m);
  mk_unref(m);
}

/* ---- idle timeout ------------------------------------------------------- */

static void begin_drain(mk_proc *p, tconn *c);

/* No bytes either way for idle_ms: both flows end with the reason, and the
** connection closes as in begin_drain (what is still queued is dropped). */
static void idle_expired(mk_proc *p, tconn *c) {
  if (c->stats) c->stats->v[C_TIMEOUTS]++;
  withdraw_flows(p, c, "idle timeout");
  c->closing = 1;
  free_queue(c);
  begin_drain(p, c);
}

/* Watch market:monotonic_alarm(due rounded up to a multiple of span / 64, at most
** a second): connections whose alarms fall within that grain share one
** (one ground watch, one index node), where 10,000 idle connections held
** 10,000 (issue 10), and a server closing 10,000 connections a second
** made and dropped a ground watch for each one's drain. */
static void watch_coarse(mk_proc *p, tconn *c, int bit, int64_t due, int64_t span) {
  int64_t grain = span / 64 < 1000 ? span / 64 : 1000;
  if (grain > 1) due += grain - 1 - (due + grain - 1) % grain;
  watch_alarm(p, c, bit, due);
}

/* The alarm is set at last_io + idle_ms and moved only when it fires, so
** the data path just stamps last_io. */
static void arm_idle(mk_proc *p, tconn *c) {
  int64_t due;
  unwatch(p, c, W_IDLE);
  if (c->idle_ms <= 0 || !c->connected || c->closing || c->done) return;
  due = c->last_io + c->idle_ms;
  if (due <= now_ms()) { idle_expired(p, c); return; }
  watch_coarse(p, c, W_IDLE, due, c->idle_ms);
}

/* ---- output ------------------------------------------------------------- */

/* After the queue changed: backpressure, the writable watch, closing. */
static void update_flow(mk_proc *p, tconn *c) {
  note_held(c);
  if (c->stats && (lua_Integer)c->qbytes > c->stats->v[C_MAX_QUEUED])
    c->stats->v[C_MAX_QUEUED] = (lua_Integer)c->qbytes;
  if (c->overrun > c->hard) {
    char buf[128];
    if (c->stats) c->stats->v[C_OVERFLOWS]++;
    snprintf(buf, sizeof buf, "%zu bytes sent despite backpressure: the peer is not reading",
             c->overrun);
    finish(p, c, buf);
    return;
  }
  if (!c->paused && c->qbytes > c->high) {
    mk_rtype *rt = rtype("tcp-backpressure", 2, NULL);
    mk_role r;
    c->paused = 1;
    if (c->stats) c->stats->v[C_PAUSES]++;
    r.orientation = MK_PUBLISHER;
    r.interest = MK_PARTICIPANT;
    r.topic = mk_rec(rt, mk_ref(c->loc), mk_ref(c->remote));
    mk_add_endpoint(p, "bp", 0, r);
    mk_unref(r.topic);
    mk_rtype_unref(rt);
  } else if (c->paused && c->qbytes <= c->low) {
    c->paused = 0;
    c->overrun = 0;
    mk_delete_endpoint(p, "bp", 0, NULL);
  }
  if (!c->connected) return;
  if (c->qhead != NULL || (c->secure && c->tls_rw)) {
    /* (not while a TLS write waits to read: writable, it would spin) */
    if (c->secure && c->tls_wr) unwatch(p, c, W_WR); else watch_writable(p, c, W_WR);
  } else {
    unwatch(p, c, W_WR);
    if (c->closing) begin_drain(p, c);
  }
}

static ssize_t tls_put(mk_proc *p, tconn *c, const char *s, size_t n);

/* send() what it takes of s[0..n): bytes written, 0 when the socket is
** full, -1 when the connection failed (finished then). */
static ssize_t put(mk_proc *p, tconn *c, const char *s, size_t n) {
  ssize_t w;
  if (c->secure) return tls_put(p, c, s, n);
  do {
    w = send(c->fd, s, n, MSG_NOSIGNAL);
  } while (w < 0 && errno == EINTR);
  if (w < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) { finish_errno(p, c, errno); return -1; }
    return 0;
  }
  if (w > 0) {
    if (c->idle_ms > 0) c->last_io = stamp_ms();
    mk_detail_io(p, 0, (size_t)w);
  }
  return w;
}

static void shut_wr(mk_proc *p, tconn *c) {
  c->eof_queued = 0;
  c->shut = 1;
  if (c->secure && c->tls_done) mkd_tls_close_notify(c->tls);
  if (shutdown(c->fd, SHUT_WR) != 0 && errno != ENOTCONN) finish_errno(p, c, errno);
}

static void flush(mk_proc *p, tconn *c) {
  oblock *b;
  while ((b = c->qhead) != NULL) {
    const char *s = b->t ? mk_strdata(b->t) : b->data;
    ssize_t n = put(p, c, s + b->off, b->len - b->off);
    if (n < 0) return;
    b->off += (size_t)n;
    if (b->off < b->len) break;      /* the socket is full */
    c->qhead = b->next;
    if (c->qhead == NULL) c->qtail = NULL;
    c->qbytes -= b->held;
    mk_unref(b->t);
    free(b);
  }
  if (c->qhead == NULL && c->eof_queued) {
    shut_wr(p, c);
    if (c->done) return;
  }
  update_flow(p, c);
}

/* Queue s[0..n), the unwritten end of string term d: copied when short,
** by reference otherwise.  Returns the bytes the queue holds more (0 when
** they fitted in the last block), or -1 when out of memory. */
static ssize_t enqueue(tconn *c, mk_term *d, const char *s, size_t n) {
  oblock *b = c->qtail;
  if (n < COPY_MAX) {
    if (b != NULL && b->t == NULL) {
      size_t k = b->cap - b->len < n ? b->cap - b->len : n;
      memcpy(b->data + b->len, s, k);
      b->len += k;
      s += k;
      n -= k;
      if (n == 0) return 0;
    }
    b = malloc(BLOCK_BYTES);
    if (b == NULL) return -1;
    b->t = NULL;
    b->off = 0;
    b->cap = BLOCK_BYTES - sizeof *b;
    b->held = BLOCK_BYTES;
    memcpy(b->data, s, n);
    b->len = n;
  } else {
    b = malloc(sizeof *b);
    if (b == NULL) return -1;
    b->t = mk_ref(d);
    b->len = d->n;
    b->off = d->n - n;
    b->cap = 0;
    b->held = sizeof *b + sizeof(mk_term) + d->n + 1;
  }
  b->next = NULL;
  if (c->qtail) c->qtail->next = b; else c->qhead = b;
  c->qtail = b;
  c->qbytes += b->held;
  return (ssize_t)b->held;
}

static void warn_once(mk_proc *p, tconn *c, const mk_term *d) {
  char *who, *what;
  if (c->warned || c->base->L == NULL) return;
  c->warned = 1;
  who = mk_repr_max(c->remote, MK_REPR_SHOWN, NULL);
  what = mk_repr_max(d, MK_REPR_SHOWN, NULL);
  mkl_logf(c->base->L, p, MK_LOG_WARN, "market.tcp: ignoring a non-string subpacket",
           "market.tcp: %s: ignoring a non-string subpacket %s", who ? who : "?",
           what ? what : "?");
  free(who);
  free(what);
}

static void on_out(mk_proc *p, tconn *c, mk_term *m) {
  mk_term *d = m->kind == MK_REC && m->n == 3 ? mk_items(m)[2] : m;
  const char *s;
  size_t n;
  ssize_t added;
  if (c->eof_out || c->closing) return;
  if (d->kind == MK_EOF) {
    c->eof_out = 1;
    c->eof_queued = 1;
    if (c->connected && c->qhead == NULL) shut_wr(p, c);
    return;
  }
  if (d->kind != MK_STR) { warn_once(p, c, d); return; }
  s = mk_strdata(d);
  n = d->n;
  if (n == 0) return;
  /* Nothing queued: write at once, and queue only what the socket did
  ** not take. */
  if (c->connected && c->qhead == NULL) {
    ssize_t w = put(p, c, s, n);
    if (w < 0) return;
    if ((size_t)w == n) return;
    s += w;
    n -= (size_t)w;
  }
  added = enqueue(c, d, s, n);
  if (added < 0) { finish(p, c, "out of memory"); return; }
  if (c->paused) c->overrun += (size_t)added;
  update_flow(p, c);
}

/* mk_yield tokens: the boot's check that someone still wants the
** connection, and then its connect; the end of the hand-over from the
** observers to the flows; a look at whether to read, once the events
** queued now are taken. */
#define BOOTED ((void *)1)
#define CONNECTED ((void *)2)
#define RECHECK ((void *)3)

/* ---- closing ------------------------------------------------------------ */

/* Everything is written: the connection is done for its session.  The
** flows go (their peers see absence now, not after the drain), writing is
** shut down (the peer sees an orderly end of stream), and input is read
** and dropped until the peer's end of stream or DRAIN_MS (at most the
** linger time): closing with unread input would answer with a reset, and
** the peer could lose the last thing it was told. */
static void begin_drain(mk_proc *p, tconn *c) {
  int64_t ms = c->linger_ms < DRAIN_MS ? c->linger_ms : DRAIN_MS;
  if (c->draining || c->done) return;
  unwatch(p, c, W_WR);
  unwatch(p, c, W_LINGER);
  unwatch(p, c, W_IDLE);
  unwatch(p, c, W_MORE);
  withdraw_flows(p, c, NULL);
  mk_delete_endpoint(p, "opts", 0, NULL);
  if (c->paused) { c->paused = 0; mk_delete_endpoint(p, "bp", 0, NULL); }
  if (c->lport) mk_delete_endpoint(p, "listener", 0, NULL);
  free_input(c);
  if (!c->shut) {
    shut_wr(p, c);
    if (c->done) return;
  }
  if (c->eof_in || ms <= 0) { finish(p, c, NULL); return; }
  c->draining = 1;
  update_reading(p, c);
  watch_coarse(p, c, W_LINGER, now_ms() + ms, ms);
}

static void drain_input(mk_proc *p, tconn *c) {
  ssize_t n;
  do {
    n = recv(c->fd, rbuf, sizeof rbuf, 0);
  } while (n < 0 && errno == EINTR);
  if (n > 0) mk_detail_io(p, (size_t)n, 0);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) finish(p, c, NULL);
}

/* n > 0 bytes just read: the idle timeout's stamp, the inspector's count,
** and the next raw read's guess (its size in 256 bytes, rounded up:
** on_readable). */
static inline __attribute__((always_inline)) void note_read(mk_proc *p, tconn *c, size_t n) {
  if (c->idle_ms > 0) c->last_io = stamp_ms();
  mk_detail_io(p, n, 0);
  c->lastread = ((n + 255) >> 8) & 0x1ff;
}

/* n bytes just read into rbuf (from the socket, or from a TLS session). */
static inline __attribute__((always_inline)) void got(mk_proc *p, tconn *c, size_t n) {
  note_read(p, c, n);
  received(p, c, rbuf, n);
}

/* Before a read (of the socket, or of a TLS session): 1 when nothing is
** to be read now, and what is due instead was done.  No reader since
** this was queued (peers_changed's RECHECK is still to come): what the
** socket holds stays there, as it does unwatched.  Frames left over:
** they go first. */
static inline int not_now(mk_proc *p, tconn *c) {
  if (c->readers == 0) { update_reading(p, c); return 1; }
  if (c->more) { pump(p, c); return 1; }
  return 0;
}

/* Raw chunks read in place: a chunk about as large as the last one is
** read into the string term that carries it (mk_str_room), where reading
** into rbuf and copying into a term cost a copy of every byte and, at 4
** KiB a chunk, a cache line written cold for each 64 of them (issue 10:
** 63 first-level misses of an echoed round trip's 306; docs/performance.md,
** "Chunks read in place").  The guess is the last chunk's size
** (lastread): a longer chunk's rest comes into rbuf (readv), and the two
** are joined by one copy as before; a shorter one (under three quarters
** of the guess) is copied into a term that fits (mk_str_fill).  Small
** chunks (the last one IN_PLACE_MIN bytes or fewer) are read into rbuf: a
** copy of a few hundred bytes costs less than the second buffer's setting
** up; so is a chunk whose guess could get no room (a shorter one may
** still fit in memory). */
#define IN_PLACE_MIN 1024

/* Read the socket into t's room of want bytes, and rbuf for the rest. */
static ssize_t readv_into(tconn *c, mk_term *t, size_t want) {
  struct iovec iov[2];
  iov[0].iov_base = mk_strdata(t);
  iov[0].iov_len = want;
  iov[1].iov_base = rbuf;
  iov[1].iov_len = c->readsize - want;
  return readv(c->fd, iov, want < c->readsize ? 2 : 1);
}

/* The string term of the n bytes read in place: t's first want bytes, and
** rbuf's after them when there were more (t is stolen; NULL when out of
** memory). */
static mk_term *read_in(mk_term *t, size_t want, size_t n) {
  if (n > want) {                      /* longer: join the two parts */
    mk_term *u = mk_str_room(n);
    if (u != NULL) {
      memcpy(mk_strdata(u), mk_strdata(t), want);
      memcpy(mk_strdata(u) + want, rbuf, n - want);
    }
    mk_unref(t);
    t = u;
  }
  return t != NULL ? mk_str_fill(t, n) : NULL;
}

static void on_readable(mk_proc *p, tconn *c) {
  mk_term *t = NULL;
  size_t want = 0;
  ssize_t n;
  int err;
  if (c->fd < 0) return;
  if (c->draining) { drain_input(p, c); return; }
  if (not_now(p, c)) return;
  if (c->framing == F_RAW && c->lastread > IN_PLACE_MIN / 256) {
    want = (size_t)c->lastread << 8;
    if (want > c->readsize) want = c->readsize;
    t = mk_str_room(want);
  }
  do {
    n = t != NULL ? readv_into(c, t, want) : recv(c->fd, rbuf, c->readsize, 0);
  } while (n < 0 && errno == EINTR);
  err = errno;
  if (n > 0 && t != NULL) {
    note_read(p, c, (size_t)n);
    deliver_term(p, c, read_in(t, want, (size_t)n));
    return;
  }
  mk_unref(t);
  if (n > 0) {
    got(p, c, (size_t)n);
  } else if (n == 0) {
    end_of_input(p, c);
  } else if (err != EAGAIN && err != EWOULDBLOCK) {
    finish_errno(p, c, err);
  }
}

static void on_linger(mk_proc *p, tconn *c) {
  char buf[96];
  if (c->draining) { finish(p, c, NULL); return; }
  snprintf(buf, sizeof buf, "closed with unsent output after %lld ms", (long long)c->linger_ms);
  finish(p, c, buf);
}

/* Peers: readers subscribe to the inbound flow, senders publish the
** outbound one.  When the last of them goes, flush and close.  With
** nothing left to write the drain reads on: the socket's watch stays
** (withdrawn here and made again in begin_drain, it cost four endpoint
** changes, the ground's included, on every connection a server closed). */
static void peers_changed(mk_proc *p, tconn *c) {
  if (c->seen && c->readers + c->senders == 0 && !c->closing) {
    c->closing = 1;
    unwatch(p, c, W_IDLE);
    if (!c->connected) { finish(p, c, NULL); return; }
    if (c->qhead == NULL) { begin_drain(p, c); return; }
    if (c->linger_ms <= 0) { on_linger(p, c); return; }
    watch_alarm(p, c, W_LINGER, now_ms() + c->linger_ms);
  }
  /* The last reader gone: its senders may follow in this turn (a session
  ** that ends withdraws both, the inbound flow first), and then the drain
  ** reads on.  Reading stops after the events queued now, not at once.
  ** (Closing with output queued, it stops now.) */
  if (c->readers == 0 && c->senders > 0 && !c->in_failed && (c->watching & W_RD))
    mk_yield(p, RECHECK);
  else
    update_reading(p, c);
  if (c->more) pump(p, c);
  else if (c->secure && c->tls_done && !c->done) update_more(p, c);   /* what TLS holds decrypted */
}

/* ---- settings, applied -------------------------------------------------- */

/* The base and the option sets, later over earlier, into *m. */
static void settle(const tconn *c, tconf *m) {
  tconf o;
  uint32_t i;
  int k;
  *m = c->base->cf;
  for (i = 0; i < c->nopts; i++) {
    parse_settings(mk_items(c->opts[i])[2], &o);
    for (k = 0; k < NKEYS; k++)
      if (o.set & (1u << k)) { m->v[k] = o.v[k]; m->set |= 1u << k; }
  }
}

static void arm_dial(mk_proc *p, tconn *c);

/* The settings, applied to the fields. */
static void reconfigure(mk_proc *p, tconn *c) {
  tconf m;
  int framing = c->framing, held = c->held;
  size_t max_frame = c->max_frame;
  int64_t idle = c->idle_ms;
  settle(c, &m);
  /* Held, the socket is not read: the kernel's buffers fill and TCP
  ** pushes back on the peer, while the session keeps its subscription
  ** (withdrawing it would drop what is on its way to it). */
  c->held = (m.set & (1u << K_READING)) && m.v[K_READING] == 0;
  c->framing = (uint8_t)m.v[K_FRAMING];
  c->max_frame = (uint32_t)m.v[K_MAX_FRAME];
  c->idle_ms = m.v[K_IDLE];
  c->high = (size_t)m.v[K_HIGH];
  c->low = m.set & (1u << K_LOW) ? (size_t)m.v[K_LOW] : c->high / 2;
  /* Marks that cross (set apart, or merged from two sets) would publish
  ** the pause and withdraw it again message by message. */
  if (c->low > c->high) c->low = c->high;
  c->hard = m.set & (1u << K_HARD) ? (size_t)m.v[K_HARD] : 8 * c->high;
  c->readsize = (uint32_t)m.v[K_READ];
  c->linger_ms = m.v[K_LINGER];
  if (p == NULL || c->done || c->draining) return;
  if (c->dial && c->dial->begun && !c->connected && c->dial->timeout_ms != m.v[K_CONNECT]) {
    c->dial->timeout_ms = m.v[K_CONNECT];
    arm_dial(p, c);
    if (c->done) return;
  }
  if (c->framing != framing || c->max_frame != max_frame) {
    /* What waits for the end of a line or frame is framed anew. */
    reframe(p, c);
    if (c->done) return;
  }
  if (c->idle_ms != idle) arm_idle(p, c);
  if (c->held != held) update_reading(p, c);
  if (!c->closing && !c->done) update_flow(p, c);
}

static void options_changed(mk_proc *p, tconn *c, mk_term *topic, int present) {
  mk_term *s = topic->kind == MK_REC && topic->n == 3 ? mk_items(topic)[2] : NULL;
  uint32_t i;
  if (s == NULL || s->kind == MK_WILD) return;
  if (present) {
    tconf cf;
    const char *bad;
    if (c->nopts == UINT16_MAX) {
      if (c->base->L)
        lua_warning(c->base->L, "market.tcp: more than 65535 option sets: ignored", 0);
      return;
    }
    if (c->nopts == c->optcap) {
      uint32_t ncap = c->optcap ? 2u * c->optcap : 1;   /* mostly one: the listener's */
      mk_term **n;
      if (ncap > UINT16_MAX) ncap = UINT16_MAX;
      n = realloc(c->opts, ncap * sizeof *n);
      if (n == NULL) { finish(p, c, "out of memory"); return; }
      c->opts = n;
      c->optcap = (uint16_t)ncap;
    }
    bad = parse_settings(s, &cf);
    if (bad && c->base->L) {
      /* Only a hand-made record can get here: tcp.options checks. */
      char buf[160];
      snprintf(buf, sizeof buf, "market.tcp: ignoring the tcp-options setting %.60s", bad);
      lua_warning(c->base->L, buf, 0);
    }
    c->opts[c->nopts++] = mk_ref(topic);
  } else {
    /* Equal sets cannot be told apart: the latest of them goes. */
    for (i = c->nopts; i-- > 0;)
      if (mk_equal(c->opts[i], topic)) break;
    if (i == (uint32_t)-1) return;
    mk_unref(c->opts[i]);
    memmove(&c->opts[i], &c->opts[i + 1], (c->nopts - i - 1) * sizeof *c->opts);
    c->nopts--;
  }
  reconfigure(p, c);
}

/* ---- connecting --------------------------------------------------------- */

/* The connect completed.  Only now are the flows published, so that a
** user who sees them may send at once and nothing it sends then can meet a
** connect that fails (docs/tcp.md, "Connecting").  "want-out" stays until
** what was routed to it alone (sent early) has been delivered: the resume
** comes after every event now queued (took_over). */
static void established(mk_proc *p, tconn *c) {
  c->connected = 1;
  c->last_io = stamp_ms();
  unwatch(p, c, W_CONN);
  unwatch(p, c, W_DIAL);
  if (!c->flows) {
    add_flows(p, c);
    mk_yield(p, CONNECTED);
  }
  update_reading(p, c);
  arm_idle(p, c);
  if (!c->done) flush(p, c);
}

/* ---- TLS ------------------------------------------------------------------ */

/*
** A connection with a TLS configuration (docs/tcp.md, "TLS"; tls.c) is
** encrypted below the framing: its chunks, lines and frames are the
** plaintext's.  The handshake comes first, and the flows wait for it: an
** outbound connection is connected once its handshake is over (a
** certificate that does not verify is the connect's failure, as a
** refusal is), and an accepted one is shown to the listener's observers
** only then, so that a client that cannot speak TLS (a port scanner, a
** plain HTTP request) never gets a session; its manager ends alone,
** counted in tcp.stats.tls_failures, within connect_timeout.  During the
** handshake the manager watches the socket itself (W_RD for reading,
** W_CONN for writing).  Afterwards a read may have to write and a write
** to read (tls_rw, tls_wr), and bytes read from the socket may wait
** decrypted in the session (mkd_tls_pending): they are taken before the
** socket is asked again, as the framing's left-over frames are.
*/

/* The TLS configuration the option sets give an outbound connection, the
** latest set that names one; NULL: plain. */
static const mk_term *tls_config(const tconn *c) {
  uint32_t i, j;
  for (i = c->nopts; i-- > 0;) {
    const mk_term *seq = mk_items(c->opts[i])[2];
    if (seq->kind != MK_SEQ) continue;
    for (j = seq->n; j-- > 0;) {
      const mk_term *kv = mk_items(seq)[j];
      if (kv->kind == MK_SEQ && kv->n == 2 && is_str(mk_items(kv)[0], "tls")) {
        const mk_term *v = mk_items(kv)[1];
        return mkd_tls_is_config(v) ? v : NULL;
      }
    }
  }
  return NULL;
}

/* A handshake that failed: counted; an accepted connection's, which no
** one else hears of, also logged at level info (a server's operator may
** want to know why its clients fail; port scanners make them all day). */
static void tls_failed(mk_proc *p, tconn *c, const char *why) {
  if (c->stats) c->stats->v[C_TLS_FAILED]++;
  if (c->lport != NULL && c->base->L != NULL && mkl_log_enabled(c->base->L, MK_LOG_INFO)) {
    char *who = mk_repr_max(c->remote, MK_REPR_SHOWN, NULL);
    mkl_logf(c->base->L, p, MK_LOG_INFO, "market.tcp: tls handshake failed",
             "market.tcp: %s: %s", who ? who : "?", why);
    free(who);
  }
  finish(p, c, why);
}

/* What the handshake told of the peer, published before the flows for
** as long as the connection lives: tcp.peer_certificate(remote, local,
** certificate), the certificate a tcp-certificate record (tls.c,
** mkd_tls_peer) or false when the peer gave none.  A session that
** observes it at its start hears it before any byte (docs/tcp.md,
** "TLS"). */
static void publish_peer(mk_proc *p, tconn *c) {
  static const char *const fields[] = { "source", "destination", "certificate" };
  mk_rtype *rt = rtype("tcp-peer-certificate", 3, fields);
  mk_term *cert = mkd_tls_peer(c->tls);
  mk_role r;
  /* (a certificate that cannot be made a term: none, rather than a
  ** session waiting for word of one until the connection ends) */
  if (cert == NULL) cert = mk_bool(0);
  if (rt != NULL) {
    r.orientation = MK_PUBLISHER;
    r.interest = MK_PARTICIPANT;
    r.topic = mk_rec(rt, mk_ref(c->remote), mk_ref(c->loc), cert);
    cert = NULL;
    if (r.topic != NULL) mk_add_endpoint(p, "peer", 0, r);
    mk_unref(r.topic);
  }
  mk_unref(cert);
  if (rt != NULL) mk_rtype_unref(rt);
}

/* An accepted connection whose handshake is over: shown now. */
static void accepted(mk_proc *p, tconn *c) {
  c->connected = 1;
  c->last_io = stamp_ms();
  unwatch(p, c, W_DIAL);
  add_flows(p, c);
  arm_idle(p, c);
}

static void tls_handshake(mk_proc *p, tconn *c) {
  char why[512];
  int r = mkd_tls_handshake(c->tls, why, sizeof why);
  if (r == MKD_TLS_WANT_READ) {
    unwatch(p, c, W_CONN);
    watch(p, c, W_RD, c->rd);
    return;
  }
  if (r == MKD_TLS_WANT_WRITE) {
    unwatch(p, c, W_RD);
    watch_writable(p, c, W_CONN);
    return;
  }
  if (r != 1) { tls_failed(p, c, why); return; }
  c->tls_done = 1;
  unwatch(p, c, W_CONN);
  unwatch(p, c, W_RD);
  publish_peer(p, c);
  if (c->lport != NULL) accepted(p, c); else established(p, c);
}

/* Plaintext from the session: what one read of the socket brought, and
** what the session holds decrypted besides (a record larger than
** read_size), while the framing's budget lasts and someone reads (held
** too: it was read from the socket already). */
static void tls_readable(mk_proc *p, tconn *c) {
  char why[512];
  ssize_t n;
  do {
    n = mkd_tls_read(c->tls, rbuf, c->readsize, why, sizeof why);
    if (n > 0) {
      got(p, c, (size_t)n);
    } else if (n == 0) {
      end_of_input(p, c);
      return;
    } else if (n == MKD_TLS_WANT_WRITE) {
      c->tls_rw = 1;
      watch_writable(p, c, W_WR);
      return;
    } else if (n == MKD_TLS_ERROR) {
      finish(p, c, why);
      return;
    } else {
      break;                              /* MKD_TLS_WANT_READ: the socket's next readiness */
    }
  } while (!c->done && !c->in_failed && !c->more && c->readers > 0 &&
           mkd_tls_pending(c->tls) > 0);
  if (!c->done) update_more(p, c);
}

/* The socket is readable (or, with tls_rw, writable) for a TLS
** connection: the handshake's next step, a write that waited to read, or
** plaintext (on_readable's steps otherwise). */
static void tls_on_readable(mk_proc *p, tconn *c) {
  if (c->fd < 0) return;
  if (c->draining) { drain_input(p, c); return; }
  if (!c->tls_done) { tls_handshake(p, c); return; }
  if (c->tls_wr) {                        /* a write waited to read: the queue goes on */
    c->tls_wr = 0;
    flush(p, c);
    if (c->done) return;
    update_reading(p, c);
    if (!(c->watching & W_RD)) return;
  }
  if (not_now(p, c)) return;
  tls_readable(p, c);
}

/* put's steps for a TLS connection. */
static ssize_t tls_put(mk_proc *p, tconn *c, const char *s, size_t n) {
  char why[256];
  ssize_t w = mkd_tls_write(c->tls, s, n, why, sizeof why);
  if (w == MKD_TLS_ERROR) { finish(p, c, why); return -1; }
  if (w == MKD_TLS_WANT_READ) { c->tls_wr = 1; update_reading(p, c); }
  if (w <= 0) return 0;
  if (c->idle_ms > 0) c->last_io = stamp_ms();
  mk_detail_io(p, 0, (size_t)w);
  return w;
}

/* The connect completed: the TLS handshake first, if the settings ask for
** one. */
static void on_connected(mk_proc *p, tconn *c) {
  const mk_term *cfg;
  if (c->tls == NULL && (cfg = tls_config(c)) != NULL) {
    char why[512];
    const mk_term *host = mk_items(c->remote)[0];
    int unix_path = c->dial != NULL && c->dial->unix_path;
    c->tls = mkd_tls_new(cfg, c->fd, 0, unix_path ? NULL : mk_strdata(host), why, sizeof why);
    if (c->tls == NULL) { tls_failed(p, c, why); return; }
    c->secure = 1;
  }
  if (c->secure && !c->tls_done) { tls_handshake(p, c); return; }
  established(p, c);
}

/* The hand-over is done: the observers go.  If the users left meanwhile,
** the flows met nobody, and no absence will come to close the
** connection: close it now. */
static void took_over(mk_proc *p, tconn *c) {
  mk_delete_endpoint(p, "want-in", 0, NULL);
  mk_delete_endpoint(p, "want-out", 0, NULL);
  if (c->readers + c->senders == 0) {
    c->seen = 1;
    peers_changed(p, c);
  }
}

/* A user came or went ("want-in": reader, or "want-out") while
** connecting.  When the last one goes there is nobody to connect for. */
static void wanted(mk_proc *p, tconn *c, int reader, int d) {
  tdial *dl = c->dial;
  if (dl == NULL) return;
  if (reader) dl->readers += d; else dl->senders += d;
  if (d > 0) c->seen = 1;
  if (!c->flows && c->seen && dl->readers + dl->senders == 0) finish(p, c, NULL);
}

static void dial_expired(mk_proc *p, tconn *c) {
  char buf[64];
  if (c->connected) return;
  if (c->dial == NULL) {            /* accepted: its TLS handshake's time */
    if (!c->secure) return;
    snprintf(buf, sizeof buf, "tls: no handshake within %lld ms",
             (long long)c->base->cf.v[K_CONNECT]);
    tls_failed(p, c, buf);
    return;
  }
  snprintf(buf, sizeof buf, "connect timed out after %lld ms", (long long)c->dial->timeout_ms);
  finish(p, c, buf);
}

/* The connect timeout: an alarm at started + timeout_ms, the whole time
** from the start to connected (resolving and every address tried), moved
** when the setting changes while connecting. */
static void arm_dial(mk_proc *p, tconn *c) {
  tdial *d = c->dial;
  int64_t at;
  unwatch(p, c, W_DIAL);
  if (d == NULL || c->connected || c->done || d->timeout_ms <= 0) return;
  at = d->started + d->timeout_ms;
  if (at <= now_ms()) { dial_expired(p, c); return; }
  watch_alarm(p, c, W_DIAL, at);
}

/* A Unix socket (tcp.address(path, "unix")): connect() completes or fails
** at once, except that a full listen queue says EAGAIN where TCP would
** send its SYN again: tried again after 10 ms, doubling up to a second,
** until the connect timeout.  The path was checked by start_connect. */
static void try_unix(mk_proc *p, tconn *c) {
  tdial *d = c->dial;
  const mk_term *path = mk_items(c->remote)[0];
  struct sockaddr_un sa;
  socklen_t len;
  int fd, inprogress;
  char why[128];
  if (mkd_unix_addr(mk_strdata(path), path->n, &sa, &len, why, sizeof why) != 0) {
    finish(p, c, why);
    return;
  }
  fd = mkd_tcp_connect((const struct sockaddr *)&sa, len, &inprogress);
  if (fd >= 0) {
    set_fd(c, fd);
    if (!inprogress) on_connected(p, c);
    else watch_writable(p, c, W_CONN);
    return;
  }
  if (errno != EAGAIN && errno != EWOULDBLOCK) { finish_errno(p, c, errno); return; }
  d->retry_ms = d->retry_ms == 0 ? 10 : d->retry_ms < 500 ? 2 * d->retry_ms : 1000;
  watch_alarm(p, c, W_CONN, now_ms() + d->retry_ms);
}

static int usable(const struct addrinfo *ai) {
  return ai->ai_family == AF_INET || ai->ai_family == AF_INET6;
}

static void try_next(mk_proc *p, tconn *c) {
  tdial *d = c->dial;
  for (;;) {
    int fd, inprogress;
    const struct addrinfo *ai = d->ai ? d->ai->ai_next : d->addrs;
    while (ai && !usable(ai)) ai = ai->ai_next;
    d->ai = ai;
    if (ai == NULL) { finish(p, c, d->lasterr[0] ? d->lasterr : "no address"); return; }
    fd = mkd_tcp_connect(ai->ai_addr, ai->ai_addrlen, &inprogress);
    if (fd >= 0) {
      set_fd(c, fd);
      if (!inprogress) on_connected(p, c);
      else watch_writable(p, c, W_CONN);
      return;
    }
    mkd_strerror(errno, d->lasterr, sizeof d->lasterr);
  }
}

static void on_conn(mk_proc *p, tconn *c) {
  int err;
  if (c->connected) return;
  if (c->fd < 0) {               /* a Unix socket's queue was full: again */
    unwatch(p, c, W_CONN);
    if (c->dial->unix_path) try_unix(p, c);
    return;
  }
  err = mkd_so_error(c->fd);
  if (err == 0) { on_connected(p, c); return; }
  if (c->dial->unix_path) { finish_errno(p, c, err); return; }
  mkd_strerror(err, c->dial->lasterr, sizeof c->dial->lasterr);
  unwatch(p, c, W_CONN);
  mkd_close_watched(c->fd);
  set_fd(c, -1);
  try_next(p, c);
}

static const char *host_of(tconn *c) { return mk_strdata(mk_items(c->remote)[0]); }

static void finish_host(mk_proc *p, tconn *c, const char *fmt, const char *why) {
  const char *host = host_of(c);
  size_t n = strlen(fmt) + strlen(host) + strlen(why) + 1;
  char *buf = malloc(n);
  if (buf == NULL) { finish(p, c, "out of memory"); return; }
  snprintf(buf, n, fmt, host, why);
  finish(p, c, buf);
  free(buf);
}

static void on_resolved(mk_proc *p, tconn *c) {
  tdial *d = c->dial;
  const struct addrinfo *res, *ai;
  const char *err = NULL;
  char buf[256];
  if (d == NULL || d->job == NULL || !mkd_resolve_poll(d->job, &res, &err, buf, sizeof buf))
    return;
  unwatch(p, c, W_RESOLVE);
  mkd_close_watched(d->rfd);     /* the job stays: it holds the addresses */
  d->rfd = -1;
  if (res == NULL) { finish_host(p, c, "unknown host %s (%s)", err); return; }
  for (ai = res; ai && !usable(ai); ai = ai->ai_next) {}
  if (ai == NULL) { finish_host(p, c, "unknown host %s (%s)", "no address"); return; }
  d->addrs = res;
  d->ai = NULL;
  try_next(p, c);
}

static void bad_address(mk_proc *p, tconn *c, const char *why) {
  char *r = mk_repr_max(c->remote, MK_REPR_SHOWN, NULL);
  size_t n = (r ? strlen(r) : 1) + strlen(why) + 16;
  char *buf = malloc(n);
  if (buf) snprintf(buf, n, "bad address %s: %s", r ? r : "?", why);
  finish(p, c, buf ? buf : "bad address");
  free(buf);
  free(r);
}

static int is_unix(const mk_term *port) {
  return port->kind == MK_STR && port->n == 4 && memcmp(mk_strdata(port), "unix", 4) == 0;
}

/* Resolve host (numeric at once, a name on a thread), then try_next. */
static void resolve(mk_proc *p, tconn *c, const mk_term *host, const mk_term *port) {
  tdial *d = c->dial;
  const char *err = NULL;
  int rc;
  rc = mkd_resolve_start(mk_strdata(host), (int)port->v.i, SOCK_STREAM, &d->numeric,
                         &d->job, &d->rfd, &err);
  if (rc < 0) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", err);
    buf[0] = (char)tolower((unsigned char)buf[0]);
    finish_host(p, c, "cannot resolve %s: %s", buf);
  } else if (rc == 0) {
    d->addrs = d->numeric;
    d->ai = NULL;
    try_next(p, c);
  } else {
    mk_term *t = ground1(mk_ground_readable, d->rfd);
    watch(p, c, W_RESOLVE, t);
    mk_unref(t);
  }
}

static void start_connect(mk_proc *p, tconn *c) {
  tdial *d = c->dial;
  mk_term *host = NULL, *port = NULL;
  tconf m;
  if (c->remote->kind == MK_REC && c->remote->n == 2) {
    host = mk_items(c->remote)[0];
    port = mk_items(c->remote)[1];
  }
  if (host != NULL && host->kind == MK_STR && is_unix(port)) {
    struct sockaddr_un sa;
    socklen_t len;
    char why[128];
    if (mkd_unix_addr(mk_strdata(host), host->n, &sa, &len, why, sizeof why) != 0) {
      bad_address(p, c, why);
      return;
    }
  } else if (host == NULL || host->kind != MK_STR || port->kind != MK_INT ||
             port->v.i < 1 || port->v.i > 65535) {
    bad_address(p, c, "want tcp.address(host, port 1..65535) or tcp.address(path, \"unix\")");
    return;
  } else if (memchr(mk_strdata(host), '\0', host->n) != NULL) {
    /* The resolver reads a C string: "127.0.0.1\0x" would be 127.0.0.1. */
    bad_address(p, c, "host name holds a NUL byte");
    return;
  } else if (host->n == 0) {
    /* (The resolver said "cannot resolve : empty host name".) */
    bad_address(p, c, "empty host name");
    return;
  }
  d->begun = 1;
  d->unix_path = is_unix(port);
  d->started = now_ms();
  settle(c, &m);
  d->timeout_ms = m.v[K_CONNECT];
  if (d->unix_path) try_unix(p, c);
  else resolve(p, c, host, port);
  arm_dial(p, c);               /* (not when connected or failed at once) */
}

/* ---- the process -------------------------------------------------------- */

static void boot(mk_proc *p, tconn *c) {
  static const char *const ofields[] = { "local", "remote", "settings" };
  mk_role r;
  mk_term *w = mk_wild();
  mk_rtype *ort = rtype("tcp-options", 3, ofields);
  /* First the option sets, so that those published already are applied
  ** (their presence events queued) before anything is read. */
  r.interest = MK_OBSERVER;
  r.orientation = MK_SUBSCRIBER;
  r.topic = mk_rec(ort, mk_ref(c->loc), mk_ref(c->remote), w);
  mk_add_endpoint(p, "opts", 0, r);
  mk_unref(r.topic);
  mk_rtype_unref(ort);
  if (c->lport) {
    /* Inbound: the observer spawns a session when it sees us.  If the
    ** listener closes before anyone took this connection, close it. */
    static const char *const fields[] = { "port" };
    mk_rtype *rt = rtype("tcp-driver:listener-closed", 1, fields);
    if (!c->secure) add_flows(p, c);
    r.interest = MK_PARTICIPANT;
    r.orientation = MK_SUBSCRIBER;
    r.topic = mk_rec(rt, mk_ref(c->lport));
    mk_add_endpoint_tagged(p, "listener", r, T_LISTENER, 0);
    mk_unref(r.topic);
    mk_rtype_unref(rt);
    if (c->secure) {
      /* Shown once its handshake is over (accepted), if within
      ** connect_timeout. */
      c->connected = 0;
      if (c->base->cf.v[K_CONNECT] > 0)
        watch_alarm(p, c, W_DIAL, now_ms() + c->base->cf.v[K_CONNECT]);
      tls_handshake(p, c);
      return;
    }
    arm_idle(p, c);
  } else {
    /* Outbound: no flows until connected (tdial), only the observers of
    ** the users.  The process that asked is here already; if it went away
    ** meanwhile, there is nobody to connect for.  Both are known once
    ** everything now pending has run, and only then does the connect
    ** start: the option sets published before are applied by then (their
    ** presence is queued), so that a Unix connect, which completes inside
    ** the call, finds its TLS configuration and connect_timeout.  (Started
    ** here, it went plain, sending in clear what was meant to be
    ** encrypted; a TCP connect escaped only by taking a turn.) */
    if ((c->dial = calloc(1, sizeof *c->dial)) == NULL) { finish(p, c, "out of memory"); return; }
    c->dial->rfd = -1;
    add_pair(p, c, "want-in", "want-out", MK_OBSERVER);
    mk_yield(p, BOOTED);
  }
}

static void handle(mk_proc *p, const mk_event *ev) {
  tconn *c = mk_proc_data(p);
  const char *e = ev->endpoint;
  if (c->done) return;
  switch (ev->type) {
    case MK_EV_BOOT:
      boot(p, c);
      break;
    case MK_EV_PRESENCE:
    case MK_EV_ABSENCE: {
      int d = ev->type == MK_EV_PRESENCE ? 1 : -1;
      if (strcmp(e, "in") == 0) c->readers += d;
      else if (strcmp(e, "out") == 0) c->senders += d;
      else if (strcmp(e, "opts") == 0) { options_changed(p, c, ev->role.topic, d > 0); break; }
      else if (strncmp(e, "want-", 5) == 0) { wanted(p, c, e[5] == 'i', d); break; }
      else break;
      if (d > 0 && !c->seen) {
        c->seen = 1;
        /* Taken: the listener's closing no longer concerns it (boot). */
        if (c->lport) mk_delete_endpoint(p, "listener", 0, NULL);
      }
      peers_changed(p, c);
      break;
    }
    case MK_EV_MESSAGE:
      /* The ground's events, and the listener's word that it closed, are
      ** ground terms.  One with a wildcard in it is a process's message
      ** that unifies with everything, send(market._): taken for them, it
      ** timed out a connect or a linger at once, or closed a connection
      ** its listener had not yet handed over. */
      if (ev->tag != T_OUT && !ev->message->ground) break;
      switch (ev->tag) {
        case W_RD:
          if (c->secure) tls_on_readable(p, c); else on_readable(p, c);
          break;
        case T_OUT: on_out(p, c, ev->message); break;     /* "out" or "want-out" */
        case W_WR:
          if (c->secure && c->tls_rw) {   /* a TLS read waited to write */
            c->tls_rw = 0;
            tls_on_readable(p, c);
            if (c->done) break;
          }
          flush(p, c);
          break;
        case W_RESOLVE: on_resolved(p, c); break;
        case W_CONN:
          if (c->secure && !c->tls_done) tls_handshake(p, c); else on_conn(p, c);
          break;
        case W_DIAL: dial_expired(p, c); break;
        case W_IDLE: arm_idle(p, c); break;
        case W_MORE:
          unwatch(p, c, W_MORE);
          pump(p, c);
          if (c->secure && !c->more && !c->done) tls_readable(p, c);
          break;
        case W_LINGER: on_linger(p, c); break;
        case T_LISTENER:
          if (!c->seen) {
            c->closing = 1;
            begin_drain(p, c);
          }
          break;
        default: break;
      }
      break;
    case MK_EV_RESUME:
      if (ev->cont == CONNECTED) took_over(p, c);
      else if (ev->cont == RECHECK) update_reading(p, c);
      else if (!c->seen) finish(p, c, NULL);        /* BOOTED */
      else start_connect(p, c);
      break;
    default:
      break;
  }
}

static void destroy(mk_proc *p) {
  tconn *c = mk_proc_data(p);
  uint32_t i;
  if (c == NULL) return;
  free_queue(c);
  free_input(c);
  for (i = 0; i < c->nopts; i++) mk_unref(c->opts[i]);
  free(c->opts);
  close_resolver(c);
  if (c->dial && c->dial->numeric) freeaddrinfo(c->dial->numeric);
  free(c->dial);
  mkd_tls_free(c->tls);
  base_release(c->base);
  if (c->fd >= 0) mkd_close_watched(c->fd);
  set_fd(c, -1);
  mk_match_slot_clear(&c->inslot);
  flow_remove(c);
  mk_unref(c->remote);
  mk_unref(c->loc);
  mk_unref(c->lport);
  mkd_count_release(c->stats);
  leave_count(c);
  /* A connection that held much (a slow reader's queue) leaves free
  ** memory scattered through the heap, which malloc keeps unless asked:
  ** give it back, at most once per TRIM_AFTER bytes so freed. */
  trim_credit += c->peak;
  if (trim_credit >= TRIM_AFTER) {
    trim_credit = 0;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
  }
  mk_pool_free_at(c, sizeof *c, 0);
  nmanagers--;
  shared_release();
}

/* mk_behavior.prefetch: the connection's two lines, then the terms a
** chunk is made of and, through the inbound slot, the session that will
** hear it (a readable descriptor's event: the round trip's first). */
static void prefetch(const mk_proc *p, int stage) {
  const tconn *c = mk_proc_data(p);
  if (c == NULL) return;
  if (stage == 0) {
    __builtin_prefetch(c);
    __builtin_prefetch((const char *)c + 64);
    return;
  }
  if (stage == 1) {
    __builtin_prefetch(c->remote);
    __builtin_prefetch(c->loc);
  }
  mk_prefetch_receivers(p, &c->inslot, stage - 1);
}

static const mk_behavior tcpconn_behavior = { "tcp", handle, NULL, destroy, NULL, 0, NULL,
                                              prefetch };

/* ---- spawning, from Lua ------------------------------------------------- */

static mk_proc *caller(lua_State *L, const char *what) {
  mk_proc *p = mkl_current(L);
  if (p == NULL) luaL_error(L, "market.sys.%s: not inside a market process", what);
  if (mk_ground_readable == NULL) luaL_error(L, "market.sys.%s: no ground VM", what);
  return p;
}

/* The defaults at idx, a counted reference: a settings sequence naming
** every key but low_water and hard_limit, which may be left to follow
** high_water. */
static tbase *parsedefaults(lua_State *L, int idx) {
  const char *err, *bad;
  lua_State *main;
  mk_term *t = mkl_toterm(L, idx, &err);
  unsigned need = ~((1u << K_LOW) | (1u << K_HARD) | (1u << K_MAXCONN) | (1u << K_REUSEPORT) |
                    (1u << K_READING) | (1u << K_TLS)) &
                  ((1u << NKEYS) - 1);
  tconf cf;
  if (t == NULL) luaL_error(L, "market.sys: the defaults are not a term: %s", err);
  bad = parse_settings(t, &cf);
  mk_unref(t);
  if (bad) luaL_error(L, "market.sys: bad default setting %s", bad);
  if ((cf.set & need) != need) luaL_error(L, "market.sys: the defaults are incomplete");
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  main = lua_tothread(L, -1);
  lua_pop(L, 1);
  if (last_base == NULL || !same_conf(&last_base->cf, &cf) || last_base->L != main) {
    tbase *b = malloc(sizeof *b);
    if (b == NULL) luaL_error(L, "out of memory");
    b->refs = 0;
    b->cf = cf;
    b->L = main;
    last_base = b;
  }
  last_base->refs++;
  return last_base;
}

/* sys.tcp_defaults(settings): a settings sequence checked and parsed
** once.  tcp.lua makes one again only when a tunable changed: parsed at
** every accept, the sequence (a term made of nine pairs) cost about
** 12,000 instructions, 4% of a connection a server closes. */
typedef struct tdefaults {
  tbase *base;              /* one reference; NULL until parsed */
  const char *brand;        /* last: defaults_brand (mkl_branded) */
} tdefaults;

static const char defaults_brand[] = "market.tcp defaults";
#define DEFAULTS_MT "market.tcp.defaults"

static int l_tcp_defaults(lua_State *L) {
  tdefaults *d = lua_newuserdatauv(L, sizeof *d, 0);
  d->base = NULL;
  d->brand = defaults_brand;
  luaL_setmetatable(L, DEFAULTS_MT);
  d->base = parsedefaults(L, 1);
  return 1;
}

static int defaults_gc(lua_State *L) {
  tdefaults *d = mkl_branded(L, 1, sizeof(tdefaults), defaults_brand);
  if (d != NULL) { base_release(d->base); d->base = NULL; }
  return 0;
}

/* The defaults at idx: sys.tcp_defaults's, or a settings sequence parsed
** now.  A reference for the caller. */
static tbase *getdefaults(lua_State *L, int idx) {
  tdefaults *d = mkl_branded(L, idx, sizeof(tdefaults), defaults_brand);
  if (d != NULL && d->base != NULL) { d->base->refs++; return d->base; }
  return parsedefaults(L, idx);
}

/* A manager's data; takes the references remote, loc and lport (may be
** NULL) and the descriptor fd (-1: connect). */
static tconn *newconn(lua_State *L, tbase *base, mkd_count *stats, mkd_count *conns, int fd,
                      mk_term *remote, mk_term *loc, mk_term *lport) {
  /* on a cache line's boundary (pool.h): the round trip's fields, then
  ** the slot from its `wraps` on, are its first two lines (above) */
  tconn *c = remote ? mk_pool_alloc_at(sizeof *c, 0) : NULL;   /* NULL: out of memory */
  if (c == NULL) {
    if (fd >= 0) close(fd);
    mk_unref(remote); mk_unref(loc); mk_unref(lport);
    shared_release();
    return NULL;
  }
  memset(c, 0, sizeof *c);
  nmanagers++;
  c->remote = remote;
  c->loc = loc;
  c->lport = lport;
  if (channel_rt == NULL) channel_rt = rtype("tcp-channel", 3, channel_fields);
  c->fd = -1;
  c->base = base;
  base->refs++;
  reconfigure(NULL, c);
  c->stats = stats;
  if (stats) stats->refs++;
  c->conns = conns;
  if (conns) { conns->refs++; conns->v[C_LIVE]++; }
  if (fd >= 0) {
    set_fd(c, fd);
    c->connected = 1;
    c->last_io = stamp_ms();
  }
  return c;
}

/* A connection not taken: tcp.refused(loc, tcp.address(host, port), why),
** sent by the listener, and counted. */
static void refuse(mk_proc *p, mkd_count *stats, mk_rtype *art, mk_term *loc, const char *host,
                   int64_t port, const char *why) {
  static const char *const fields[] = { "listener", "remote", "reason" };
  mk_rtype *rt = rtype("tcp-refused", 3, fields);
  mk_term *m = mk_rec(rt, mk_ref(loc), mk_rec(art, mk_cstr(host), mk_int(port)), mk_cstr(why));
  if (stats) stats->v[C_REFUSED]++;
  mk_send(p, m);
  mk_unref(m);
  mk_rtype_unref(rt);
}

/* sys.tcp_accept(lsock, loc, lport, max, maxconn, conns, defaults, stats [, tls]):
** tls, a TLS configuration (tcp.tls): every connection speaks TLS. */
static int l_tcp_accept(lua_State *L) {
  mk_proc *p = caller(L, "tcp_accept");
  int lfd = mkd_sockfd(L, 1), failed = 0, exhausted = 0, unix_path;
  lua_Integer max = luaL_checkinteger(L, 4), maxconn = luaL_checkinteger(L, 5), n = 0;
  mkd_count *conns = mkd_checkcount(L, 6, conns_names);
  mkd_count *stats = mkd_testcount(L, 8, stats_names);
  mk_term *loc, *lport;
  const char *err;
  tbase *base;
  static const char *const afields[] = { "host", "port" };
  mk_rtype *art;
  char host[MKD_HOST_MAX], name[160], why[64];
  mk_term *tls = NULL;
  if (!lua_isnoneornil(L, 9)) {
    tls = mkl_toterm(L, 9, &err);
    if (tls == NULL || !mkd_tls_is_config(tls)) {
      mk_unref(tls);
      return luaL_error(L, "market.sys.tcp_accept: tls must be a TLS configuration");
    }
  }
  base = getdefaults(L, 7);
  /* Raising nothing from here on: the references would leak. */
  loc = mkl_toterm(L, 2, &err);
  lport = mkl_toterm(L, 3, &err);
  if (loc == NULL || lport == NULL) {
    mk_unref(loc);
    mk_unref(lport);
    mk_unref(tls);
    base_release(base);
    return luaL_error(L, "market.sys.tcp_accept: the local end and port must be terms");
  }
  art = rtype("tcp-address", 2, afields);
  unix_path = lport->kind == MK_STR;      /* tcp.listener(path) */
  for (; n < max; n++) {
    int port, fd = mkd_accept(lfd, host, sizeof host, &port);
    int64_t rport;
    mk_term *remote;
    tconn *c;
    mkd_tls *t = NULL;
    char twhy[512];
    if (fd < 0) {
      int e = errno;
      if (e == EAGAIN) break;
      /* Out of descriptors: tell the waiting client no rather than let it
      ** hang in the backlog (lsys.c keeps a descriptor spare for this). */
      if ((e == EMFILE || e == ENFILE) && mkd_accept_refuse(lfd, host, sizeof host, &port) == 0) {
        rport = unix_path ? ++conns->v[C_SERIAL] : port;
        refuse(p, stats, art, loc, host, rport, mkd_strerror(e, why, sizeof why));
        exhausted = 1;
        continue;
      }
      if (errno != EAGAIN) { failed = 1; mkd_strerror(e, why, sizeof why); }
      break;
    }
    rport = unix_path ? ++conns->v[C_SERIAL] : port;
    if (maxconn > 0 && conns->v[C_LIVE] >= maxconn) {
      close(fd);
      snprintf(name, sizeof name, "too many connections (%lld)", (long long)maxconn);
      refuse(p, stats, art, loc, host, rport, name);
      continue;
    }
    remote = mk_rec(art, host_term(host), mk_int(rport));   /* (NULL: newconn says) */
    if (remote != NULL && !unix_path) {
      const char *no = flow_taken(loc, remote)
                       ? "a connection from this address and port to this listener is still open"
                       : flow_room() != 0 ? "out of memory" : NULL;
      if (no != NULL) {
        close(fd);
        mk_unref(remote);
        refuse(p, stats, art, loc, host, rport, no);
        continue;
      }
    }
    if (tls != NULL && (t = mkd_tls_new(tls, fd, 1, NULL, twhy, sizeof twhy)) == NULL) {
      /* The configuration's failure (its files gone since tcp.tls read
      ** them): no connection of this listener can be served. */
      close(fd);
      mk_unref(remote);
      if (stats) stats->v[C_TLS_FAILED]++;
      refuse(p, stats, art, loc, host, rport, twhy);
      continue;
    }
    c = newconn(L, base, stats, conns, fd, remote, mk_ref(loc), mk_ref(lport));
    if (c == NULL) { mkd_tls_free(t); continue; }
    if (!unix_path) flow_add(c);      /* (flow_room made room) */
    c->tls = t;
    c->secure = t != NULL;
    if (unix_path)
      snprintf(name, sizeof name, "tcp %.100s #%lld", mk_strdata(lport), (long long)rport);
    else
      snprintf(name, sizeof name, "tcp %s:%d", host, port);
    mk_spawn(p, &tcpconn_behavior, c, name, NULL);
  }
  mk_rtype_unref(art);
  mk_unref(loc);
  mk_unref(lport);
  mk_unref(tls);
  base_release(base);
  if (failed) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushinteger(L, n);
  if (!exhausted) return 1;
  lua_pushstring(L, why);
  return 2;
}

/* sys.tcp_manage(remote, loc, name, defaults, stats) -> pid */
static int l_tcp_manage(lua_State *L) {
  mk_proc *p = caller(L, "tcp_manage");
  const char *name = luaL_checkstring(L, 3);
  mkd_count *stats = mkd_testcount(L, 5, stats_names);
  mk_term *remote, *loc;
  const char *err;
  tbase *base = getdefaults(L, 4);
  tconn *c;
  remote = mkl_toterm(L, 1, &err);
  loc = mkl_toterm(L, 2, &err);
  if (remote == NULL || loc == NULL) {
    mk_unref(remote);
    mk_unref(loc);
    base_release(base);
    return luaL_error(L, "market.sys.tcp_manage: the remote and local ends must be terms");
  }
  c = newconn(L, base, stats, NULL, -1, remote, loc, NULL);
  base_release(base);
  if (c == NULL) return luaL_error(L, "out of memory");
  lua_pushinteger(L, (lua_Integer)mk_spawn(p, &tcpconn_behavior, c, name, NULL));
  return 1;
}

/* ---- inspection ---------------------------------------------------------- */

/* The connection's session, the process of index i's peer: a participant
** that hears its inbound flow, else one that feeds its outbound flow (not
** the driver, which observes them).  Its index, or s->nprocs: none. */
static size_t session_of(const mk_snap_vm *s, size_t i) {
  int inbound;
  size_t k;
  for (inbound = 1; inbound >= 0; inbound--)
    for (k = 0; k < s->nconvs; k++) {
      const mk_snap_conv *cv = &s->convs[k];
      size_t me = inbound ? cv->pub_proc : cv->sub_proc;
      size_t peer = inbound ? cv->sub_proc : cv->pub_proc;
      size_t ep = inbound ? cv->sub_endpoint : cv->pub_endpoint;
      if (me == i && peer != i && s->procs[peer].endpoints[ep].role.interest == MK_PARTICIPANT)
        return peer;
    }
  return s->nprocs;
}

/* A TLS connection's peer, from what its manager publishes of it
** (publish_peer: the endpoint "peer" in its snapshot sp), as the fields
** peer_subject and peer_fingerprint: who is connected, for the
** inspector, without reading the certificate again. */
static void push_peer(lua_State *L, const mk_snap_proc *sp) {
  size_t k;
  for (k = 0; k < sp->nendpoints; k++) {
    const mk_term *t = sp->endpoints[k].role.topic, *cert;
    if (strcmp(sp->endpoints[k].name, "peer") != 0 || t->kind != MK_REC || t->n != 3) continue;
    cert = mk_items(t)[2];
    if (cert->kind != MK_REC || cert->n != 8) return;
    mkl_pushterm(L, mk_items(cert)[0]);
    lua_setfield(L, -2, "peer_subject");
    mkl_pushterm(L, mk_items(cert)[4]);
    lua_setfield(L, -2, "peer_fingerprint");
    return;
  }
}

/* The connections of vm (whose snapshot is s) and of the VMs nested in it,
** appended to the table at the top, *n so far. */
static void inspect_vm(lua_State *L, mk_vm *vm, const mk_snap_vm *s, lua_Integer *n) {
  size_t i, k;
  luaL_checkstack(L, 4, "market.tcp.inspect: VMs nested too deep");
  for (i = 0; i < s->nprocs; i++) {
    const mk_snap_proc *sp = &s->procs[i];
    mk_proc *p = sp->pid ? mk_vm_proc(vm, sp->pid) : NULL;
    const tconn *c;
    uint64_t in, out;
    if (p == NULL) continue;
    if (sp->vm != NULL) inspect_vm(L, mk_proc_data(p), sp->vm, n);
    if (sp->kind != tcpconn_behavior.kind || (c = mk_proc_data(p)) == NULL) continue;
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, (lua_Integer)sp->pid);
    lua_setfield(L, -2, "pid");
    lua_pushstring(L, s->path);
    lua_setfield(L, -2, "vm");
    mkl_pushterm(L, c->loc);
    lua_setfield(L, -2, "address");
    mkl_pushterm(L, c->remote);
    lua_setfield(L, -2, "peer");
    if ((k = session_of(s, i)) < s->nprocs) {
      lua_pushinteger(L, (lua_Integer)s->procs[k].pid);
      lua_setfield(L, -2, "session");
    }
    if (c->secure) {
      lua_pushstring(L, c->tls_done ? mkd_tls_version(c->tls) : "handshake");
      lua_setfield(L, -2, "tls");
      push_peer(L, sp);
    }
    if (mk_detail_io_of(p, &in, &out)) {
      lua_pushinteger(L, (lua_Integer)in);
      lua_setfield(L, -2, "bytes_in");
      lua_pushinteger(L, (lua_Integer)out);
      lua_setfield(L, -2, "bytes_out");
      lua_pushinteger(L, (lua_Integer)c->qbytes);
      lua_setfield(L, -2, "buffered");
    }
    lua_rawseti(L, -2, ++*n);
  }
}

/* sys.tcp_inspect([max]) -> { {pid =, vm =, address =, peer =, session =,
** [tls =, peer_subject =, peer_fingerprint =,]
** [bytes_in =, bytes_out =, buffered =]}, ... } (drivers/tcp.lua, inspect):
** with max, the connections among the first max processes of a snapshot
** (mk_vm_snapshot_max) */
static int l_tcp_inspect(lua_State *L) {
  mk_ground *g = mkl_ground(L);
  mk_snap_vm **box;
  lua_Integer n = 0, max = luaL_optinteger(L, 1, 0);
  if (g == NULL) return luaL_error(L, "market.tcp.inspect: no ground VM is running");
  if (max < 0) max = 0;
  /* Making the tables may raise: the snapshot is held meanwhile by a
  ** userdata whose __gc frees it (lua/lsnap.c). */
  box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, "market.snapshot");
  *box = mk_vm_snapshot_max(mk_ground_vm(g), (size_t)max);
  lua_newtable(L);
  inspect_vm(L, mk_ground_vm(g), *box, &n);
  mk_snapshot_free(*box);
  *box = NULL;
  return 1;
}

void mkd_open_tcpconn(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"tcp_accept", l_tcp_accept}, {"tcp_manage", l_tcp_manage}, {"tcp_stats", l_tcp_stats},
    {"tcp_conns", l_tcp_conns}, {"tcp_settings", l_tcp_settings},
    {"tcp_inspect", l_tcp_inspect}, {"tcp_defaults", l_tcp_defaults}, {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
  if (luaL_newmetatable(L, DEFAULTS_MT)) {
    lua_pushcfunction(L, defaults_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "the defaults are market's own");
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
}

/*
** lcluster.c: a NATS connection for the cluster driver (drivers/cluster.lua),
** through libnats (internal: part of `market.sys`, not of the public API).
**
**   sys.nats_connect(urls, name [, timeout_ms [, tls]]) -> conn | nil, msg
**       urls: a list of nats:// or tls:// URLs (servers of one NATS
**       cluster; tls, a table, as set_tls reads it, or a tls:// URL: over
**       TLS); name:
**       the connection's name as the server shows it.  Returns at once: the
**       first connection is made on a thread of its own, which waits for
**       the servers up to timeout_ms in all (default 2000), and ends with
**       the event "connected" or "failed", why (see "Connecting").  Then it
**       reconnects for ever (every 250 ms, the servers in turn).
**   conn:fd()                  -> a descriptor, readable while events wait
**   conn:next([max])           -> "message", subject, data, at
**                               | "connected" (the first time; the other
**                                 methods may be called from then on)
**                               | "failed", why (no first connection:
**                                 nothing else comes)
**                               | "disconnected" | "reconnected"
**                               | "closed" [, why] (libnats gave up: it
**                                 never reconnects)
**                               | nil (nothing waits: the descriptor is
**                                 quiet until something new arrives)
**                               | false (max sends and feedback were
**                                 delivered on the way: more may wait)
**                               | "malformed", why (sends or feedback
**                                 from a known node that were refused)
**                               (at: when the message reached the queue, in
**                               sys.cluster_clock()'s milliseconds; with
**                               max, see "The forwarder")
**   conn:waiting()             -> when the oldest event waiting reached the
**                                 queue (ms, as at), or nil if none waits
**   conn:subscribe(subject)    -> sid | nil, msg
**   conn:unsubscribe(sid)
**   conn:publish(subject, data) -> true | nil, msg   (see "Writing")
**   conn:dropped()             -> messages dropped because the queue was full
**   conn:close()               (also on garbage collection)
**   conn:start(...), conn:node(...), conn:forget(name), conn:role(...),
**   conn:unrole(name, id), conn:connected(yes), conn:heard(name),
**   conn:deliver(kind, body)   the forwarder (see "The forwarder")
**   sys.cluster_clock()        -> ms of a clock that only goes forward
**                                 (CLOCK_MONOTONIC), the one of `at`
**   sys.cluster_stats()        -> counters, read and set as a table's fields
**   sys.host_pid()             -> host name, pid (for default node names)
**
** Threads.  libnats runs its own threads: message handlers, the
** disconnected/reconnected/closed callbacks, pings and reconnection.  Those
** callbacks only copy bytes into a mutex-protected queue (struct queue)
** and, when the loop was not woken already, write to an eventfd; the loop
** thread subscribes to the eventfd's readability with the ground event
** every driver uses (market.ground.readable), so it works in a nested VM
** through an event relay too.  This is the "ev_async and a locked queue" in the form
** market's drivers already have (as sys.resolve's pipe).  No Lua state, term
** or VM is touched off the loop thread.
**
** Connecting.  natsConnection_Connect tries each server in turn and waits
** for it (timeout_ms in all), and the ground loop, every process and every
** connection of the program, waited with it: two seconds frozen when a
** server was down or silent.  So it runs on a thread of its own
** (connect_thread), which hands the connection over through the queue
** (queue.made, then the "connected" event), or its failure ("failed").
** A conn closed meanwhile leaves the thread to close what it made.
**
** Writing.  libnats writes on the caller's thread once its 32 KiB buffer
** is full (else its flusher thread does).  A server that stops reading
** could then hold the loop: the write deadline (WRITE_DEADLINE_MS) bounds
** that wait, after which libnats drops the connection and reconnects (the
** driver sees disconnected, then reconnected).
**
** Memory.  The queue (struct queue) is shared by the Lua userdata, the
** connection's callbacks and every subscription's handler: each holds a
** reference and the last to let go frees it.  libnats tells us when its
** side lets go: the closed callback is the connection's last, and a
** subscription's on-complete callback runs after its handler's last call.
** The queue's run being filled holds at most QUEUE_MAX bytes (and the
** run the loop reads at most as much): a message arriving beyond that is
** dropped and counted (nothing is buffered without bound).
*/
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include <lua.h>
#include <lauxlib.h>

#include "mkd.h"
#include "mkl.h"

/*
** libnats is opened when the first connection is made, not linked: it
** brings libssl, libcrypto and libprotobuf-c, whose relocations took a
** third of every start of market (docs/performance.md, bench-startup),
** for the many programs that never join a cluster.  NATS_API lists every
** libnats function this file calls, each called through the table
** nats_open fills (natsapi.natsOptions_Create(...)).  The library stays
** loaded: its threads call back until the end of the process (pin_self,
** below).
*/
#define NATS_API(X) \
  X(natsConnection_Close) X(natsConnection_Connect) X(natsConnection_Destroy) \
  X(natsConnection_FlushTimeout) X(natsConnection_GetLastError) \
  X(natsConnection_GetMaxPayload) X(natsConnection_Publish) X(natsConnection_Status) \
  X(natsConnection_Subscribe) X(natsMsg_Destroy) X(natsMsg_GetData) \
  X(natsMsg_GetDataLength) X(natsMsg_GetSubject) X(natsOptions_Create) \
  X(natsOptions_Destroy) X(natsOptions_SetAllowReconnect) X(natsOptions_SetClosedCB) \
  X(natsOptions_SetDisconnectedCB) X(natsOptions_SetErrorHandler) \
  X(natsOptions_SetMaxReconnect) X(natsOptions_SetName) X(natsOptions_SetNoEcho) \
  X(natsOptions_SetReconnectBufSize) X(natsOptions_SetReconnectWait) \
  X(natsOptions_SetReconnectedCB) X(natsOptions_SetSendAsap) X(natsOptions_SetServers) \
  X(natsOptions_SetSecure) X(natsOptions_LoadCATrustedCertificates) \
  X(natsOptions_LoadCertificatesChain) X(natsOptions_SkipServerVerification) \
  X(natsOptions_SetExpectedHostname) \
  X(natsOptions_SetTimeout) X(natsOptions_SetWriteDeadline) \
  X(natsOptions_UseGlobalMessageDelivery) X(natsStatus_GetText) \
  X(natsSubscription_Destroy) X(natsSubscription_SetOnCompleteCB) \
  X(natsSubscription_Unsubscribe) X(nats_GetLastError) X(nats_ReleaseThreadMemory)

#define NATS_FIELD(f) __typeof__(&f) f;
static struct { NATS_API(NATS_FIELD) } natsapi;
#undef NATS_FIELD

/* The soname of the libnats built against (Debian's libnats3.4 ships
** libnats.so.3.4), then the development link, for a build elsewhere. */
#define NATS_STR_(x) #x
#define NATS_STR(x) NATS_STR_(x)
static const char *const nats_sonames[] = {
  "libnats.so." NATS_STR(NATS_VERSION_MAJOR) "." NATS_STR(NATS_VERSION_MINOR), "libnats.so", NULL };

/* Open libnats and fill natsapi; nats_failed: NULL, or why not.  Once per
** process (pthread_once: hosts on several threads may connect at once). */
static pthread_once_t nats_once = PTHREAD_ONCE_INIT;
static const char *nats_failed;
static char nats_why[256];

static void nats_load(void) {
  void *lib = mkl_dlopen(nats_sonames, "libnats",
                         "libnats" NATS_STR(NATS_VERSION_MAJOR) "." NATS_STR(NATS_VERSION_MINOR),
                         nats_why, sizeof nats_why);
  if (lib == NULL) { nats_failed = nats_why; return; }
  mkd_openssl_prepare(lib);       /* before libnats initializes OpenSSL */
#define NATS_LOAD(f) \
  if (!mkl_dlsym(lib, #f, (void **)&natsapi.f, "libnats", nats_sonames[0], nats_why, \
                 sizeof nats_why)) { \
    nats_failed = nats_why; \
    return; \
  }
  NATS_API(NATS_LOAD)
#undef NATS_LOAD
}

static const char *nats_open(void) {
  pthread_once(&nats_once, nats_load);
  return nats_failed;
}

#define CONN_MT "market.sys.nats"
#define QUEUE_MAX ((size_t)64 << 20)
#define WRITE_DEADLINE_MS 1000
#define CLOSE_FLUSH_MS 500

enum { EV_MESSAGE, EV_DISCONNECTED, EV_RECONNECTED, EV_CLOSED, EV_CONNECTED, EV_FAILED };
static const char *const ev_names[] = {"message", "disconnected", "reconnected", "closed",
                                       "connected", "failed"};

/* One event, in a run: a message's subject and data side by side in
** bytes[], the whole padded to ITEM_ALIGN. */
typedef struct item {
  double at;                 /* when it was queued: ms, as market.now() */
  int kind;
  size_t slen, dlen;
  char bytes[];
} item;

#define ITEM_ALIGN 8
#define ITEM_SIZE(slen, dlen) \
  ((sizeof(item) + (slen) + (dlen) + ITEM_ALIGN - 1) & ~(size_t)(ITEM_ALIGN - 1))
#define RUN_MIN ((size_t)64 << 10)

/* Events one after the other in one buffer: b[0..len) of cap bytes. */
typedef struct run {
  char *b;                   /* owned */
  size_t len, cap;
} run;

/* The events cross from libnats's threads to the loop's in two runs: the
** threads append to `in` under the lock; the loop takes the whole of `in`
** at once (it becomes `out`, and the old `out` the next `in`) and reads
** it without the lock.  Nothing is allocated per message, a message costs
** one lock on its way in and none on its way out, and the buffers are
** freed and allocated by whichever thread, but only when they grow. */
typedef struct queue {
  pthread_mutex_t mu;
  int refs;                  /* the userdata, the connection, each subscription */
  int efd;                   /* the eventfd; -1 once the userdata closed it */
  int woken;                 /* the eventfd was written since the loop last found
                             ** both runs empty (under mu) */
  run in;                    /* appended to under mu */
  run out;                   /* the loop's own: read from out_at */
  size_t out_at;
  size_t dropped;
  /* The first connect (connect_thread), under mu: */
  natsConnection *made;      /* made, not yet taken by conn:next ("connected"):
                             ** owned; the conn owns it once taken */
  int abandoned;             /* the conn closed first: the thread closes what
                             ** it makes */
} queue;

typedef struct fwd fwd;

/* The sends (feedback) of one message from a known node, being delivered
** by conn:next: topic i is data[ends[i-1]..ends[i]) (ends[-1]: at), all
** framed and checked to end with the data before the first is delivered. */
typedef struct batch {
  item *it;                  /* in the queue's out run: valid until the next take */
  int k;                     /* K_SEND or K_FEEDBACK */
  size_t at;                 /* where the next topic begins in the data */
  size_t next, n;            /* the next topic's index (0-based), the count */
  size_t name, nlen;         /* the sender's name in the data, for reports */
  size_t *ends;              /* owned: grows with the largest batch met */
  size_t maxends;
} batch;

typedef struct conn {
  queue *q;                  /* a reference, NULL once closed */
  natsConnection *nc;        /* owned; NULL until "connected", and once closed */
  natsSubscription **subs;   /* owned array; a slot is NULL when unsubscribed */
  int nsubs;
  fwd *f;                    /* a reference (conn:start), NULL before and once closed */
  batch b;                   /* b.next < b.n while a batch is being delivered */
} conn;

static void queue_release(queue *q) {
  int last;
  pthread_mutex_lock(&q->mu);
  last = --q->refs == 0;
  pthread_mutex_unlock(&q->mu);
  if (!last) return;
  free(q->in.b);
  free(q->out.b);
  pthread_mutex_destroy(&q->mu);
  free(q);
}

/* When a message arrived, for loss detection (a node not heard from for
** lost_after_ms): in ms of CLOCK_MONOTONIC, not of the wall clock
** (market.now()), which a step (NTP, a resumed machine) moves: a step
** forward made every peer look lost at once. */
static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int l_cluster_clock(lua_State *L) {
  lua_pushnumber(L, now_ms());
  return 1;
}

/* On a libnats thread: queue an event, waking the loop unless it was woken
** already and has not yet found the queue empty.  Nothing is queued once
** the loop side has closed; a message is dropped (and counted) when `in`
** would pass QUEUE_MAX bytes, or cannot grow. */
static void push(queue *q, int kind, const char *subj, size_t slen, const char *data,
                 size_t dlen) {
  size_t need = ITEM_SIZE(slen, dlen);
  double at = now_ms();
  item *it;
  pthread_mutex_lock(&q->mu);
  if (q->efd < 0) { pthread_mutex_unlock(&q->mu); return; }
  if (kind == EV_MESSAGE && q->in.len + need > QUEUE_MAX) goto drop;
  if (q->in.len + need > q->in.cap) {
    size_t cap = q->in.cap ? q->in.cap : RUN_MIN;
    char *b;
    while (cap < q->in.len + need) cap *= 2;
    if ((b = realloc(q->in.b, cap)) == NULL) goto drop;
    q->in.b = b;
    q->in.cap = cap;
  }
  it = (item *)(q->in.b + q->in.len);
  it->at = at;
  it->kind = kind;
  it->slen = slen;
  it->dlen = dlen;
  if (slen) memcpy(it->bytes, subj, slen);
  if (dlen) memcpy(it->bytes + slen, data, dlen);
  q->in.len += need;
  if (!q->woken) {
    uint64_t one = 1;
    ssize_t w;
    q->woken = 1;
    do { w = write(q->efd, &one, sizeof one); } while (w < 0 && errno == EINTR);
  }
  pthread_mutex_unlock(&q->mu);
  return;
drop:
  q->dropped++;
  pthread_mutex_unlock(&q->mu);
}

/* On the loop thread: the next event, or NULL when none waits (the
** eventfd is then quiet until the next push).  The item lives until the
** next call. */
static item *take(queue *q) {
  item *it;
  if (q->out_at >= q->out.len) {
    run t;
    pthread_mutex_lock(&q->mu);
    if (q->in.len == 0) {
      /* Empty: quiet the eventfd, under the lock, so that the next push
      ** wakes the loop again. */
      uint64_t v;
      ssize_t r;
      do { r = read(q->efd, &v, sizeof v); } while (r < 0 && errno == EINTR);
      q->woken = 0;
      pthread_mutex_unlock(&q->mu);
      return NULL;
    }
    t = q->out;
    q->out = q->in;
    q->in = t;
    q->in.len = 0;
    pthread_mutex_unlock(&q->mu);
    q->out_at = 0;
  }
  it = (item *)(q->out.b + q->out_at);
  q->out_at += ITEM_SIZE(it->slen, it->dlen);
  return it;
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *ud) {
  const char *subj = natsapi.natsMsg_GetSubject(m);
  int n = natsapi.natsMsg_GetDataLength(m);
  push(ud, EV_MESSAGE, subj, strlen(subj), natsapi.natsMsg_GetData(m), n > 0 ? (size_t)n : 0);
  natsapi.natsMsg_Destroy(m);
}

static void on_disconnected(natsConnection *nc, void *ud) { push(ud, EV_DISCONNECTED, NULL, 0, NULL, 0); }
static void on_reconnected(natsConnection *nc, void *ud) { push(ud, EV_RECONNECTED, NULL, 0, NULL, 0); }

/* The connection's last callback: its reference goes.  Unless conn:close
** closed it (nothing is queued then), libnats gave up on it (the server
** refused us on a reconnection, say): the event carries why. */
static void on_closed(natsConnection *nc, void *ud) {
  const char *why = NULL;
  if (natsapi.natsConnection_GetLastError(nc, &why) == NATS_OK || why == NULL) why = "";
  push(ud, EV_CLOSED, NULL, 0, why, strlen(why));
  queue_release(ud);
}

/* A subscription's handler has run for the last time. */
static void on_sub_complete(void *ud) { queue_release(ud); }

/* libnats reports asynchronous errors (a slow consumer) here; the cluster
** driver finds out through sequence gaps, so they are only ignored. */
static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus s, void *ud) {}

/* ---- counters ------------------------------------------------------------ */

/* cluster.stats: a counter set (mkd.h), counted by the forwarder without
** entering Lua; the userdata and each forwarder hold a reference.
** max_steps is the Lua driver's: the most steps one of its activations
** took (drivers/cluster.lua, "work in steps"). */
enum { S_SENT, S_RECEIVED, S_DELIVERED, S_DROPPED, S_MALFORMED, S_MAX_STEPS };
static const char *const stat_names[] = {
  "sent", "received", "delivered", "dropped", "malformed", "max_steps", NULL};

/* sys.cluster_stats() -> a new set of counters, all 0 */
static int l_cluster_stats(lua_State *L) {
  mkd_newcount(L, "cluster.stats", stat_names);
  return 1;
}

/* ---- the forwarder --------------------------------------------------------
**
** Most of a cluster's traffic is sends and feedback, and the Lua driver
** paid a Lua activation and a dozen table operations for each one, twice on
** a node that delivered it (the observer hears what the driver sent in).
** So the data path is here: a native process ("cluster NODE data") holds
** the driver's two observers of cluster.topic(_), matches what they hear
** against the remote roles and publishes it, envelope and CBOR made in C;
** conn:next hands sends and feedback from a known node straight into the
** VM.  The Lua driver keeps everything else (the protocol's other kinds,
** nodes coming and going, heartbeats) and tells the forwarder what it
** needs to know: the nodes (conn:node, conn:forget), their roles
** (conn:role, conn:unrole) and whether NATS is connected.  The observers'
** presences and absences (local roles appearing and going) are handed to
** two Lua functions of the driver at once, on a thread of their own, so
** that announcements and forwarded messages go out in the order the VM
** made them.
**
** Batches.  A NATS message costs both ends far more than a topic's bytes
** (libnats's publish, its parser and threads, the queue), so the sends and
** feedback for one node are carried several to a message,
** [2, "send", node, inc, X1, X2, ...] (docs/cluster.md).  The forwarder
** appends each to its node's batch, and publishes the batch when the VM
** has run what was queued when the batch began (a continuation of its own,
** mk_yield: the loop never blocks with a batch held, and a lone message
** waits only for the events queued before it, in a nested VM too), when it
** reaches BATCH_MAX bytes, before a message of the other kind for that
** node, and before anything else this node publishes (conn:publish: an
** announcement never overtakes a message sent before it) or forgets.
*/
#define BATCH_MAX ((size_t)32 << 10)   /* a batch's topics, in bytes: libnats's buffer */
enum { K_SEND, K_FEEDBACK };
/* The forwarder's endpoints, by tag: the observer of subscribers hears
** feedback, the observer of publishers hears sends; and the driver's
** lifeline. */
enum { TAG_FEEDBACK = 1, TAG_SEND, TAG_DRIVER };

/* A remote role that messages may be forwarded to: id, orientation and
** topic (cluster.topic(X), owned). */
typedef struct rrole {
  int64_t id;
  mk_orientation o;
  mk_term *topic;
} rrole;

/* A remote node, as the Lua driver knows it: everything here is owned. */
typedef struct rnode {
  struct rnode *next;
  char *name;                /* its name, nlen bytes */
  size_t nlen;
  char *subject;             /* market.C.node.NAME, NUL-terminated */
  char *lead[2];             /* the envelope of its sends and feedback (as mine) */
  size_t leadlen[2];
  double heard;              /* when its last send (feedback) came here, ms; 0: none */
  rrole *roles;
  size_t nroles, maxroles;
  unsigned char *bb;         /* its batch: the topics at bb[f->room..blen) */
  size_t blen, bcap;
  size_t bn;                 /* how many (0: no batch) */
  int bk;                    /* of which kind */
} rnode;

/* Bodies sent here for another node, in order (K_SEND, K_FEEDBACK): the
** observer hears each and must not send it on.  A ring of references. */
typedef struct fifo {
  mk_term **t;
  size_t head, n, cap;
} fifo;

/* Loop thread only.  Shared by the conn (until it closes) and the native
** process (until it is destroyed): the last to let go frees it. */
struct fwd {
  int refs;
  natsConnection *nc;        /* the conn's; NULL once it closed */
  lua_State *L;              /* the callbacks' thread; NULL once the conn closed */
  int cbref;                 /* L's registry: {thread, on_presence, on_absence} */
  mkd_count *stats;          /* a reference */
  mk_rtype *rt;              /* cluster.topic's record type, a reference */
  mk_vm *vm;                 /* the driver's and the process's */
  mk_pid driver, pid;
  int connected;
  char *mine[2];             /* owned: our envelopes (send, feedback): the
                             ** items [2, kind, node, inc], encoded one after the other */
  size_t minelen[2];
  char *lead[2];             /* owned: every envelope of that kind, up to the node's name */
  size_t leadlen[2];
  unsigned char wrapper[7];  /* the version tag and array head every encoded term starts with */
  size_t room;               /* room before a batch's topics: wrapper, array head, envelope */
  size_t max_payload;        /* the server's largest message (0: not known) */
  size_t oversize;           /* topics dropped alone over max_payload, not yet
                             ** reported (conn:oversize) */
  int flush_due;             /* a continuation will publish the batches */
  rnode *nodes;              /* owned */
  fifo resent[2];
  int delivering;            /* 1 + the kind being delivered (deliver), else 0 */
};

static void fifo_clear(fifo *q) {
  while (q->n > 0) {
    mk_unref(q->t[q->head]);
    q->head = (q->head + 1) % q->cap;
    q->n--;
  }
  free(q->t);
  q->t = NULL;
  q->cap = q->head = 0;
}

static int fifo_push(fifo *q, mk_term *t) {
  if (q->n == q->cap) {
    size_t cap = q->cap ? 2 * q->cap : 16, i;
    mk_term **nt = malloc(cap * sizeof *nt);
    if (nt == NULL) return -1;
    for (i = 0; i < q->n; i++) nt[i] = q->t[(q->head + i) % q->cap];
    free(q->t);
    q->t = nt;
    q->cap = cap;
    q->head = 0;
  }
  q->t[(q->head + q->n) % q->cap] = mk_ref(t);
  q->n++;
  return 0;
}

static void node_free(rnode *n) {
  size_t i;
  for (i = 0; i < n->nroles; i++) mk_unref(n->roles[i].topic);
  free(n->roles);
  free(n->name);
  free(n->subject);
  free(n->lead[0]);
  free(n->lead[1]);
  free(n->bb);
  free(n);
}

static void fwd_release(fwd *f) {
  rnode *n, *next;
  if (f == NULL || --f->refs > 0) return;
  for (n = f->nodes; n; n = next) { next = n->next; node_free(n); }
  fifo_clear(&f->resent[0]);
  fifo_clear(&f->resent[1]);
  mkd_count_release(f->stats);
  if (f->rt) mk_rtype_unref(f->rt);
  free(f->mine[0]); free(f->mine[1]);
  free(f->lead[0]); free(f->lead[1]);
  free(f);
}

/* The forwarder calls no Lua any more.  Its callbacks (closures of the
** driver's, which hold the conn) are let go, so that a driver that ends
** without closing its conn (killed, failed) leaves it to the collector,
** which closes it. */
static void let_go_lua(fwd *f) {
  if (f->L == NULL) return;
  luaL_unref(f->L, LUA_REGISTRYINDEX, f->cbref);
  f->cbref = LUA_NOREF;
  f->L = NULL;
}

static rnode *node_find(fwd *f, const char *name, size_t len, rnode ***link) {
  rnode **l, *n;
  for (l = &f->nodes; (n = *l) != NULL; l = &n->next)
    if (n->nlen == len && memcmp(n->name, name, len) == 0) break;
  if (link) *link = l;
  return n;
}

/* A copy of s[0..len), NUL-terminated; NULL when memory runs out. */
static char *dupbytes(const char *s, size_t len) {
  char *d = malloc(len + 1);
  if (d) { memcpy(d, s, len); d[len] = '\0'; }
  return d;
}

/* Body (borrowed) delivered here for another node, as a send or feedback
** of p, which must not send it on again. */
static void deliver(fwd *f, mk_proc *p, int k, mk_term *body) {
  if (fifo_push(&f->resent[k], body) != 0) {
    f->stats->v[S_DROPPED]++;           /* out of memory: not delivered, not looped */
    return;
  }
  f->stats->v[S_DELIVERED]++;
  f->delivering = 1 + k;
  if (k == K_SEND) mk_send(p, body);
  else mk_feedback(p, body);
  f->delivering = 0;
}

/* ---- receiving a batch ---------------------------------------------------- */

/* "malformed" and why, for conn:next: what the sends (feedback) from the
** node named at b's name came with. */
static int refused(lua_State *L, batch *b, const char *fmt, ...) {
  static const char *const kinds[] = {"send", "feedback"};
  va_list ap;
  lua_pushliteral(L, "malformed");
  lua_pushfstring(L, "%s from ", kinds[b->k]);
  lua_pushlstring(L, b->it->bytes + b->it->slen + b->name, b->nlen);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 3);
  b->next = b->n = 0;                        /* nothing more of it is delivered */
  return 2;
}

/* Sends (feedback) from a node we know, to be delivered without Lua: the
** bytes must be the version wrapper, an array head, the node's envelope
** under its incarnation (docs/cluster.md, "Costs and limits") and the
** topics the head counts.  0: not so (another kind, incarnation, a node
** not known, anything else), for the Lua driver to read the long way and
** judge.  1: so, and framed (b is set, no topic delivered yet): the node
** was heard.  2: so, but not framed as the head says (cut short, bytes
** after the last, not CBOR): "malformed" and why are pushed, and nothing
** of it is delivered. */
static int batch_begin(lua_State *L, fwd *f, batch *b, item *it) {
  const unsigned char *d = (const unsigned char *)it->bytes + it->slen;
  size_t len = it->dlen, at = sizeof f->wrapper, items, end, i;
  unsigned mt;
  uint64_t count, nlen;
  rnode *n;
  int k;
  if (len <= at || memcmp(d, f->wrapper, at) != 0 || mk_cbor_head(d, len, &at, &mt, &count) != 0 ||
      mt != 4 || count < 5)
    return 0;
  items = at;
  for (k = 0; k < 2; k++)
    if (len - at > f->leadlen[k] && memcmp(d + at, f->lead[k], f->leadlen[k]) == 0) break;
  if (k == 2) return 0;
  at += f->leadlen[k];
  if (mk_cbor_head(d, len, &at, &mt, &nlen) != 0 || mt != 2 || nlen > len - at ||
      (n = node_find(f, (const char *)d + at, (size_t)nlen, NULL)) == NULL ||
      len - items < n->leadlen[k] || memcmp(d + items, n->lead[k], n->leadlen[k]) != 0)
    return 0;
  n->heard = it->at;
  f->stats->v[S_RECEIVED]++;
  b->it = it;
  b->k = k;
  b->name = at;
  b->nlen = (size_t)nlen;
  b->at = at = items + n->leadlen[k];
  b->next = 0;
  b->n = (size_t)(count - 4);                /* (each topic is a byte at least: below) */
  for (i = 0; i < count - 4; i++) {
    if (i == b->maxends) {
      size_t max = b->maxends ? 2 * b->maxends : 64;
      size_t *e = realloc(b->ends, max * sizeof *e);
      if (e == NULL) return refused(L, b, ": out of memory");
      b->ends = e;
      b->maxends = max;
    }
    if ((end = mk_cbor_item_end(d, len, at)) == 0) {
      /* (the count as the head says it, unsigned: past 2^63 a lua_Integer
      ** showed it negative, "topic 2 of -5") */
      char of[24];
      snprintf(of, sizeof of, "%" PRIu64, count - 4);
      return refused(L, b, ": topic %I of %s is cut short or not a term's CBOR", (lua_Integer)i + 1,
                     of);
    }
    b->ends[i] = at = end;
  }
  if (at != len) return refused(L, b, ": bytes after the last topic");
  return 1;
}

/* Deliver the next topic of b, by p: 1; or 2 when it does not decode as a
** term within the limits in force: "malformed" and why are pushed, and
** neither it nor those after it are delivered. */
static int batch_next(lua_State *L, fwd *f, mk_proc *p, batch *b) {
  unsigned char *d = (unsigned char *)b->it->bytes + b->it->slen, saved[sizeof f->wrapper];
  size_t end = b->ends[b->next], off = b->at - sizeof f->wrapper;   /* (behind the envelope) */
  const char *why = "out of memory";
  mk_term *x, *body = NULL;
  /* The topic's encoding is decoded in place, the version wrapper written
  ** for the while over the bytes before it. */
  memcpy(saved, d + off, sizeof saved);
  memcpy(d + off, f->wrapper, sizeof saved);
  x = mk_cbor_decode(d + off, end - off, &why);
  memcpy(d + off, saved, sizeof saved);
  if (x != NULL && (body = mk_rec(f->rt, x)) == NULL)
    why = "cluster.topic() of it is past the term limits, or out of memory";
  if (x == NULL || body == NULL)
    return refused(L, b, ": topic %I of %I: %s", (lua_Integer)b->next + 1, (lua_Integer)b->n,
                   why);
  b->next++;
  b->at = end;
  deliver(f, p, b->k, body);
  mk_unref(body);
  return 1;
}

/* ---- forwarding in batches ------------------------------------------------ */

/* Make room for n bytes in *buf, of *cap. */
static int reserve(unsigned char **buf, size_t *cap, size_t n) {
  unsigned char *b;
  size_t c = *cap ? *cap : 256;
  if (n <= *cap) return 0;
  while (c < n) c *= 2;
  if ((b = realloc(*buf, c)) == NULL) return -1;
  *buf = b;
  *cap = c;
  return 0;
}

/* The server's largest message, as it said when we connected (again);
** 0: not known (no connection). */
static size_t max_payload_of(natsConnection *nc) {
  int64_t m = nc != NULL ? natsapi.natsConnection_GetMaxPayload(nc) : 0;
  return m > 0 ? (size_t)m : 0;
}

/* Publish the first `count` topics of node n's batch, which end at `end`:
** [2, kind, node, inc, X1, ...], its wrapper, array head and our envelope
** written in the room before the topics, ending where they begin.  The
** topics after them, if any, move to the front and stay in the batch. */
static void flush_first(fwd *f, rnode *n, size_t count, size_t end) {
  size_t at = f->room, hl, rest = n->blen - end;
  int k = n->bk;
  natsStatus s = NATS_CONNECTION_CLOSED;
  at -= f->minelen[k];
  memcpy(n->bb + at, f->mine[k], f->minelen[k]);
  hl = mk_cbor_head_len(4 + count);
  at -= hl;
  mk_cbor_put_head(n->bb + at, 4, 4 + count);
  at -= sizeof f->wrapper;
  memcpy(n->bb + at, f->wrapper, sizeof f->wrapper);
  if (f->connected && f->nc != NULL && n->subject != NULL && end - at <= INT32_MAX)
    s = natsapi.natsConnection_Publish(f->nc, n->subject, n->bb + at, (int)(end - at));
  if (s == NATS_OK) {
    f->stats->v[S_SENT]++;
  } else {
    f->stats->v[S_DROPPED] += count;
    /* Only a topic alone is larger than the server takes (forward splits
    ** batches): the driver says so at its next heartbeat. */
    if (s == NATS_MAX_PAYLOAD) f->oversize += count;
  }
  n->bn -= count;
  memmove(n->bb + f->room, n->bb + end, rest);
  n->blen = n->bn > 0 ? f->room + rest : 0;
}

/* Publish node n's batch, if it has one. */
static void flush(fwd *f, rnode *n) {
  if (n->bn > 0) flush_first(f, n, n->bn, n->blen);
}

static void flush_all(fwd *f) {
  rnode *n;
  for (n = f->nodes; n; n = n->next) flush(f, n);
}

/* A local send (K_SEND) or feedback m, heard by p: once to every node with
** a role of the opposite orientation whose topic unifies with it (a scan
** over the remote roles: docs/cluster.md, "Costs"), in that node's batch,
** unless we delivered it here.  Encoded once, in the first node's batch,
** and copied into the others'. */
static void forward(mk_proc *p, fwd *f, int k, mk_term *m) {
  mk_orientation want = k == K_SEND ? MK_SUBSCRIBER : MK_PUBLISHER;
  fifo *q = &f->resent[k];
  size_t i, from = 0, len = 0;
  rnode *n, *first = NULL;
  if (q->n > 0 && q->t[q->head] == m) {
    mk_unref(q->t[q->head]);
    q->head = (q->head + 1) % q->cap;
    q->n--;
    return;
  }
  if (m->kind != MK_REC || m->n != 1) return;   /* (the observers hear cluster.topic(_)) */
  for (n = f->nodes; n; n = n->next) {
    for (i = 0; i < n->nroles; i++)
      if (n->roles[i].o == want && mk_unifies(n->roles[i].topic, m)) break;
    if (i == n->nroles) continue;
    if (n->bn > 0 && n->bk != k) flush(f, n);
    if (n->bn == 0) {
      if (reserve(&n->bb, &n->bcap, f->room) != 0) goto dropped;
      n->blen = f->room;
      n->bk = k;
    }
    if (first == NULL) {
      from = n->blen;
      if (mk_cbor_append(mk_items(m)[0], &n->bb, &n->blen, &n->bcap) != 0) goto dropped;
      first = n;
      len = n->blen - from;
    } else {
      /* (first's topic stays where it is: a flush writes before f->room) */
      if (reserve(&n->bb, &n->bcap, n->blen + len) != 0) goto dropped;
      memcpy(n->bb + n->blen, first->bb + from, len);
      n->blen += len;
    }
    n->bn++;
    /* Past the server's max_payload (n->blen, with the room before the
    ** topics, is at least the message's size): what came before goes
    ** alone, and this topic starts the next batch. */
    if (f->max_payload != 0 && n->blen > f->max_payload && n->bn > 1) {
      flush_first(f, n, n->bn - 1, n->blen - len);
      if (n == first) from = f->room;
    }
    if (n->blen - f->room >= BATCH_MAX) flush(f, n);
    else if (!f->flush_due) {
      f->flush_due = 1;
      mk_yield(p, f);
    }
    continue;
  dropped:                                    /* out of memory */
    f->stats->v[S_DROPPED]++;
  }
}

/* A local role appeared (absence: went): the driver's on_presence
** (on_absence) runs at once, with (orientation, interest, topic[,
** reason]).  An error there is the driver's failure: it ends, and this
** process with it, with the error as the reason. */
static void role_changed(mk_proc *p, fwd *f, const mk_event *ev) {
  lua_State *L = f->L;
  int top, absence = ev->type == MK_EV_ABSENCE;
  if (L == NULL) return;
  top = lua_gettop(L);
  if (!lua_checkstack(L, 6)) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, f->cbref);
  lua_rawgeti(L, -1, absence ? 3 : 2);
  lua_pushstring(L, mk_orientation_name(ev->role.orientation));
  lua_pushstring(L, mk_interest_name(ev->role.interest));
  mkl_pushterm(L, ev->role.topic);
  if (absence) {
    if (ev->reason) mkl_pushterm(L, ev->reason);
    else lua_pushnil(L);
  }
  if (lua_pcall(L, absence ? 4 : 3, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    mk_term *reason = mk_cstr(msg ? msg : "an error object that is not a string");
    lua_settop(L, top);
    let_go_lua(f);
    mk_quit(p, f->driver, reason);
    mk_fail(p, reason);
    mk_unref(reason);
    return;
  }
  lua_settop(L, top);
}

static void fwd_boot(mk_proc *p, fwd *f) {
  static const char *const names[] = {"observe subscribers", "observe publishers"};
  mk_term *topic = mk_rec(f->rt, mk_wild()), *life;
  mk_rtype *lrt = mk_rtype_get(MK_LIFELINE_LABEL, sizeof MK_LIFELINE_LABEL - 1, 1, NULL);
  mk_role r;
  int i;
  life = lrt ? mk_rec(lrt, mk_int((int64_t)f->driver)) : NULL;
  if (lrt) mk_rtype_unref(lrt);
  if (topic == NULL || life == NULL || mk_vm_proc(f->vm, f->driver) == NULL) {
    /* Out of memory, or the driver went before we began. */
    mk_unref(topic);
    mk_unref(life);
    mk_quit(p, 0, NULL);
    return;
  }
  /* The observers, in the order the Lua driver added them. */
  for (i = 0; i < 2; i++) {
    r.orientation = i == 0 ? MK_PUBLISHER : MK_SUBSCRIBER;
    r.interest = MK_EVERYTHING;
    r.topic = topic;
    mk_add_endpoint(p, names[i], 0, r);
    mk_tag_endpoint(p, names[i], i == 0 ? TAG_FEEDBACK : TAG_SEND);
  }
  /* The driver's lifeline: when the driver ends, so does its forwarder. */
  r.orientation = MK_SUBSCRIBER;
  r.interest = MK_PARTICIPANT;
  r.topic = life;
  mk_add_endpoint(p, "driver", 0, r);
  mk_tag_endpoint(p, "driver", TAG_DRIVER);
  mk_unref(topic);
  mk_unref(life);
}

static void fwd_handle(mk_proc *p, const mk_event *ev) {
  fwd *f = mk_proc_data(p);
  switch (ev->type) {
    case MK_EV_BOOT:
      fwd_boot(p, f);
      break;
    case MK_EV_PRESENCE:
    case MK_EV_ABSENCE:
      if (ev->tag == TAG_DRIVER) {
        if (ev->type == MK_EV_ABSENCE) {
          let_go_lua(f);
          mk_quit(p, 0, NULL);
        }
      } else if (ev->tag == TAG_FEEDBACK || ev->tag == TAG_SEND) {
        role_changed(p, f, ev);
      }
      break;
    case MK_EV_MESSAGE:
      if (ev->tag == TAG_FEEDBACK || ev->tag == TAG_SEND)
        forward(p, f, ev->tag == TAG_SEND ? K_SEND : K_FEEDBACK, ev->message);
      break;
    case MK_EV_RESUME:                  /* forward's: what was queued before the batches ran */
      f->flush_due = 0;
      flush_all(f);
      break;
    default:
      break;
  }
}

/* What this process heard before it ended goes out (the driver ended, say,
** before the continuation came), while the conn is open. */
static void fwd_destroy(mk_proc *p) {
  fwd *f = mk_proc_data(p);
  flush_all(f);
  fwd_release(f);
}

/* The VM asks, as deliver routes a body, whether the observer's event for
** it may be left out (vm.h, declines: the forwarder then has nothing else
** queued and is not running).  It may: hearing it would only take it off
** the ring, so it is taken off now, a delivery and an event fewer per
** message that came from another node. */
static int fwd_declines(mk_proc *p, uint32_t tag, mk_event_type type) {
  fwd *f = mk_proc_data(p);
  fifo *q;
  if (type != MK_EV_MESSAGE || f->delivering == 0 ||
      tag != (f->delivering - 1 == K_SEND ? TAG_SEND : TAG_FEEDBACK))
    return 0;
  q = &f->resent[f->delivering - 1];
  if (q->n == 0) return 0;
  q->n--;
  mk_unref(q->t[(q->head + q->n) % q->cap]);
  return 1;
}

static const mk_behavior fwd_behavior = {
  "cluster", fwd_handle, NULL, fwd_destroy, fwd_declines, 0, NULL, NULL };

/* libnats's last error on this thread as the drivers say it: without the
** "(file.c:N): " it starts with, its first letter in lower case; into buf. */
static const char *status_text(natsStatus s, char *buf, size_t size) {
  const char *last = natsapi.nats_GetLastError(NULL), *p;
  if (last == NULL || *last == '\0') last = natsapi.natsStatus_GetText(s);
  if (*last == '(' && (p = strstr(last, "): ")) != NULL) last = p + 3;
  snprintf(buf, size, "%s", last);
  /* a sentence's first word in lower case, as market's reasons have it;
  ** not an acronym's ("SSL handshake error") */
  if (!isupper((unsigned char)buf[1])) buf[0] = (char)tolower((unsigned char)buf[0]);
  return buf;
}

/* nil and libnats's last error on this thread. */
static void pushstatus(lua_State *L, natsStatus s) {
  char buf[256];
  lua_pushnil(L);
  lua_pushstring(L, status_text(s, buf, sizeof buf));
}

static conn *checkconn(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  if (c->nc == NULL)
    luaL_error(L, c->q != NULL ? "the NATS connection is not made yet (wait for \"connected\")"
                               : "the NATS connection is closed");
  return c;
}

/* Close and free a connection of ours (its closed callback releases its
** reference to the queue). */
static void nc_end(natsConnection *nc) {
  natsapi.natsConnection_Close(nc);
  natsapi.natsConnection_Destroy(nc);
}

static int c_close(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  queue *q = c->q;
  natsConnection *made;
  int i, efd;
  if (q == NULL) return 0;
  free(c->b.ends);
  memset(&c->b, 0, sizeof c->b);
  if (c->f) {
    /* The forwarder publishes no more and calls no Lua; when the driver
    ** closes (it is leaving), the forwarder ends with it. */
    fwd *f = c->f;
    mk_proc *p = mkl_current(L);
    if (p != NULL && mk_proc_vm(p) == f->vm && mk_proc_pid(p) == f->driver)
      mk_quit(p, f->pid, NULL);
    flush_all(f);
    f->nc = NULL;
    let_go_lua(f);
    c->f = NULL;
    fwd_release(f);
  }
  for (i = 0; i < c->nsubs; i++) {
    if (c->subs[i] == NULL) continue;
    natsapi.natsSubscription_Unsubscribe(c->subs[i]);
    natsapi.natsSubscription_Destroy(c->subs[i]);
  }
  free(c->subs);
  c->subs = NULL;
  c->nsubs = 0;
  if (c->nc) {
    /* What was published last (the driver's "bye") reaches the server
    ** before the connection goes: Close alone may drop what libnats's
    ** flusher has not written yet.  Bounded: a server that does not answer
    ** holds the loop CLOSE_FLUSH_MS at most. */
    if (natsapi.natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED)
      natsapi.natsConnection_FlushTimeout(c->nc, CLOSE_FLUSH_MS);
    nc_end(c->nc);
    c->nc = NULL;
  }
  /* From here on the callbacks queue nothing and write nowhere; a first
  ** connect still running closes what it makes, and one made but not yet
  ** taken is closed here. */
  pthread_mutex_lock(&q->mu);
  efd = q->efd;
  q->efd = -1;
  q->abandoned = 1;
  made = q->made;
  q->made = NULL;
  pthread_mutex_unlock(&q->mu);
  if (made != NULL) nc_end(made);
  if (efd >= 0) mkd_close_watched(efd);
  c->q = NULL;
  queue_release(q);
  return 0;
}

/* What connect_thread is given: owned by it. */
typedef struct dial { queue *q; natsOptions *o; } dial;

/* The first connect, off the loop ("Connecting").  It holds two of the
** queue's references: its own, and the connection's, which the closed
** callback releases once a connection exists (none does on a failure). */
static void *connect_thread(void *arg) {
  dial *d = arg;
  queue *q = d->q;
  natsConnection *nc = NULL;
  natsStatus s = natsapi.natsConnection_Connect(&nc, d->o);
  natsapi.natsOptions_Destroy(d->o);
  free(d);
  if (s != NATS_OK) {
    char why[256];
    status_text(s, why, sizeof why);
    push(q, EV_FAILED, NULL, 0, why, strlen(why));
    queue_release(q);                  /* the connection's: there is none */
  } else {
    int abandoned;
    pthread_mutex_lock(&q->mu);
    if (!(abandoned = q->abandoned)) q->made = nc;
    pthread_mutex_unlock(&q->mu);
    if (abandoned) nc_end(nc);
    else push(q, EV_CONNECTED, NULL, 0, NULL, 0);
  }
  queue_release(q);
  natsapi.nats_ReleaseThreadMemory();
  return NULL;
}

/* The TLS of the options o, from the table at index t (nats_connect's
** fourth argument: ca, cert, key and host strings, verify a boolean;
** drivers/cluster.lua makes it from a tcp.tls configuration), or plain
** TLS with the system's CA certificates when t is none: the servers' URLs
** say tls://.  libnats verifies the chain; the name only when one is
** given (host: server_name, or the one host of the URLs when a name). */
static natsStatus set_tls(lua_State *L, int t, natsOptions *o) {
  const char *ca = NULL, *cert = NULL, *key = NULL, *host = NULL;
  int verify = 1;
  natsStatus s;
  if (lua_istable(L, t)) {
    lua_getfield(L, t, "ca");
    ca = lua_tostring(L, -1);
    lua_getfield(L, t, "cert");
    cert = lua_tostring(L, -1);
    lua_getfield(L, t, "key");
    key = lua_tostring(L, -1);
    lua_getfield(L, t, "host");
    host = lua_tostring(L, -1);
    lua_getfield(L, t, "verify");
    verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 5);                               /* (the strings stay in the table) */
  }
  if ((s = natsapi.natsOptions_SetSecure(o, true)) != NATS_OK) return s;
  if (ca != NULL && (s = natsapi.natsOptions_LoadCATrustedCertificates(o, ca)) != NATS_OK) return s;
  if (cert != NULL &&
      (s = natsapi.natsOptions_LoadCertificatesChain(o, cert, key ? key : cert)) != NATS_OK)
    return s;
  if (!verify) return natsapi.natsOptions_SkipServerVerification(o, true);
  if (host != NULL) return natsapi.natsOptions_SetExpectedHostname(o, host);
  return NATS_OK;
}

static int l_nats_connect(lua_State *L) {
  lua_Integer timeout = luaL_optinteger(L, 3, 2000);
  const char *name = luaL_checkstring(L, 2);
  const char **urls;
  natsOptions *o = NULL;
  natsStatus s;
  queue *q;
  conn *c;
  dial *d;
  pthread_t th;
  pthread_attr_t attr;
  int i, n, err, secure = 0;
  const char *noload;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = (int)luaL_len(L, 1);
  luaL_argcheck(L, n > 0, 1, "no NATS server URL");
  if ((noload = nats_open()) != NULL) {
    lua_pushnil(L);
    lua_pushstring(L, noload);
    return 2;
  }
  urls = lua_newuserdatauv(L, (size_t)n * sizeof *urls, 0);   /* freed by the GC */
  for (i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    urls[i] = lua_tostring(L, -1);
    luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1, "NATS server URLs must be strings");
    if (strncmp(urls[i], "tls://", 6) == 0) secure = 1;
    lua_pop(L, 1);                   /* the table keeps the string alive */
  }
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    secure = 1;
  }
  c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, CONN_MT);
  if ((q = calloc(1, sizeof *q)) == NULL) return luaL_error(L, "not enough memory");
  pthread_mutex_init(&q->mu, NULL);
  q->refs = 1;
  c->q = q;                          /* from here c_close (or the GC) cleans up */
  if ((q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
    char buf[128];
    lua_pushnil(L);
    lua_pushstring(L, mkd_strerror(errno, buf, sizeof buf));
    return 2;
  }
  if ((s = natsapi.natsOptions_Create(&o)) != NATS_OK) { pushstatus(L, s); return 2; }
  if ((secure && (s = set_tls(L, 4, o)) != NATS_OK) ||
      (s = natsapi.natsOptions_SetServers(o, urls, n)) != NATS_OK ||
      (s = natsapi.natsOptions_SetName(o, name)) != NATS_OK ||
      /* libnats waits this long for each server in turn: timeout_ms is
      ** the whole wait. */
      (s = natsapi.natsOptions_SetTimeout(o, timeout / n > 0 ? timeout / n : 1)) != NATS_OK ||
      (s = natsapi.natsOptions_SetAllowReconnect(o, true)) != NATS_OK ||
      (s = natsapi.natsOptions_SetMaxReconnect(o, -1)) != NATS_OK ||
      (s = natsapi.natsOptions_SetReconnectWait(o, 250)) != NATS_OK ||
      /* Nothing is buffered while disconnected (DESIGN §7): the smallest
      ** buffer libnats takes (0 would mean its default, 8 MiB). */
      (s = natsapi.natsOptions_SetReconnectBufSize(o, 1)) != NATS_OK ||
      (s = natsapi.natsOptions_SetWriteDeadline(o, WRITE_DEADLINE_MS)) != NATS_OK ||
      /* A node hears nothing it published itself. */
      (s = natsapi.natsOptions_SetNoEcho(o, true)) != NATS_OK ||
      /* Each publish is written at once, not left to libnats's flusher
      ** thread, which waits about a millisecond for more.  Sends leave in
      ** batches, one publish per node per pass of the VM, so this costs
      ** a write(2) per batch, not per message (performance.md,
      ** "bench-cluster", "Latency"). */
      (s = natsapi.natsOptions_SetSendAsap(o, true)) != NATS_OK ||
      /* One delivery thread for every subscription of the connection (the
      ** library's pool, one worker by default): what a node published to
      ** "all" and to our own subject is queued in the order the server
      ** sent it.  With a thread per subscription a node's "bye" could
      ** overtake the snapshot it sent before, which then brought it back. */
      (s = natsapi.natsOptions_UseGlobalMessageDelivery(o, true)) != NATS_OK ||
      (s = natsapi.natsOptions_SetErrorHandler(o, on_error, NULL)) != NATS_OK ||
      (s = natsapi.natsOptions_SetDisconnectedCB(o, on_disconnected, q)) != NATS_OK ||
      (s = natsapi.natsOptions_SetReconnectedCB(o, on_reconnected, q)) != NATS_OK ||
      (s = natsapi.natsOptions_SetClosedCB(o, on_closed, q)) != NATS_OK) {
    natsapi.natsOptions_Destroy(o);
    pushstatus(L, s);
    return 2;
  }
  if ((d = malloc(sizeof *d)) == NULL) {
    natsapi.natsOptions_Destroy(o);
    return luaL_error(L, "not enough memory");
  }
  d->q = q;
  d->o = o;
  /* libnats's threads call back into this code (the handlers above)
  ** until it has let go of every connection, which may be after the Lua
  ** state that made them is closed: the first connection pins market in
  ** memory (mkd_pin_self). */
  mkd_pin_self();
  q->refs += 2;                      /* the thread's and the connection's (connect_thread) */
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  err = pthread_create(&th, &attr, connect_thread, d);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    char buf[128];
    q->refs -= 2;
    natsapi.natsOptions_Destroy(o);
    free(d);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start a thread to connect: %s", mkd_strerror(err, buf, sizeof buf));
    return 2;
  }
  return 1;
}

/* (While the first connect runs too: "connected" comes through it.) */
static int c_fd(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  if (c->q == NULL) return luaL_error(L, "the NATS connection is closed");
  lua_pushinteger(L, c->q->efd);
  return 1;
}

/* conn:next([max]): with a forwarder and max > 0, the batches of sends and
** feedback that batch_begin takes are delivered on the way, by the calling
** process, topic by topic, up to max topics: then false (more may wait;
** the descriptor stays readable, and a batch begun goes on at the next
** call).  A batch refused is "malformed", why.  The first event it does
** not take is returned as ever. */
static int c_next(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  lua_Integer max = luaL_optinteger(L, 2, 0), done = 0;
  queue *q = c->q;
  mk_proc *p = NULL;
  item *it;
  int r;
  if (q == NULL) return 0;
  if (c->f != NULL && max > 0 && (p = mkl_current(L)) != NULL && mk_proc_vm(p) != c->f->vm)
    p = NULL;
  if (p == NULL) c->b.next = c->b.n = 0;   /* (only the driver delivers: it passes max) */
  for (;;) {
    if (c->b.next < c->b.n) {            /* a batch being delivered: take() would reuse it */
      if ((r = batch_next(L, c->f, p, &c->b)) != 1) return r;
      if (++done == max) { lua_pushboolean(L, 0); return 1; }
      continue;
    }
    if ((it = take(q)) == NULL) return 0;
    if (p == NULL || it->kind != EV_MESSAGE || (r = batch_begin(L, c->f, &c->b, it)) == 0) break;
    if (r != 1) return r;
  }
  if (it->kind == EV_CONNECTED) {
    pthread_mutex_lock(&q->mu);
    c->nc = q->made;                 /* (NULL only if a close came first: then q is NULL) */
    q->made = NULL;
    pthread_mutex_unlock(&q->mu);
  }
  lua_pushstring(L, ev_names[it->kind]);
  if (it->kind != EV_MESSAGE) {
    if (it->dlen == 0) return 1;
    lua_pushlstring(L, it->bytes + it->slen, it->dlen);     /* "closed", why */
    return 2;
  }
  lua_pushlstring(L, it->bytes, it->slen);
  lua_pushlstring(L, it->bytes + it->slen, it->dlen);
  lua_pushnumber(L, it->at);
  return 4;
}

/* The cluster driver judges a node lost by the time its last message
** reached the queue, against the time of the oldest one still waiting:
** a loop that fell behind must not take a busy node for a lost one. */
static int c_waiting(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  queue *q = c->q;
  double at = 0;
  int some = 0;
  if (q == NULL) return 0;
  if (q->out_at < q->out.len) {               /* the loop's own run: no lock */
    some = 1;
    at = ((item *)(q->out.b + q->out_at))->at;
  } else {
    pthread_mutex_lock(&q->mu);
    if ((some = q->in.len > 0)) at = ((item *)q->in.b)->at;
    pthread_mutex_unlock(&q->mu);
  }
  if (!some) return 0;
  lua_pushnumber(L, at);
  return 1;
}

static int c_subscribe(lua_State *L) {
  conn *c = checkconn(L);
  const char *subject = luaL_checkstring(L, 2);
  natsSubscription *sub = NULL, **subs;
  natsStatus s;
  if ((subs = realloc(c->subs, (size_t)(c->nsubs + 1) * sizeof *subs)) == NULL)
    return luaL_error(L, "not enough memory");
  c->subs = subs;
  s = natsapi.natsConnection_Subscribe(&sub, c->nc, subject, on_msg, c->q);
  if (s == NATS_OK) {
    pthread_mutex_lock(&c->q->mu);
    c->q->refs++;                    /* the handler's, released by on_sub_complete */
    pthread_mutex_unlock(&c->q->mu);
    if ((s = natsapi.natsSubscription_SetOnCompleteCB(sub, on_sub_complete, c->q)) != NATS_OK) {
      /* Not set: this subscription's reference can never be released, so
      ** the queue outlives the connection (a small leak, never a crash). */
      natsapi.natsSubscription_Unsubscribe(sub);
      natsapi.natsSubscription_Destroy(sub);
    }
  }
  if (s != NATS_OK) { pushstatus(L, s); return 2; }
  c->subs[c->nsubs++] = sub;
  lua_pushinteger(L, c->nsubs);
  return 1;
}

static int c_unsubscribe(lua_State *L) {
  conn *c = checkconn(L);
  lua_Integer sid = luaL_checkinteger(L, 2);
  luaL_argcheck(L, sid >= 1 && sid <= c->nsubs && c->subs[sid - 1] != NULL, 2,
                "not a subscription of this connection");
  natsapi.natsSubscription_Unsubscribe(c->subs[sid - 1]);
  natsapi.natsSubscription_Destroy(c->subs[sid - 1]);
  c->subs[sid - 1] = NULL;
  return 0;
}

static int c_publish(lua_State *L) {
  conn *c = checkconn(L);
  const char *subject = luaL_checkstring(L, 2);
  size_t len;
  const char *data = luaL_checklstring(L, 3, &len);
  natsStatus s;
  if (len > INT32_MAX) { lua_pushnil(L); lua_pushliteral(L, "message too large"); return 2; }
  /* The forwarder's batches first: what this node publishes (an
  ** announcement, a heartbeat, bye) never overtakes a message sent before. */
  if (c->f != NULL) flush_all(c->f);
  s = natsapi.natsConnection_Publish(c->nc, subject, data, (int)len);
  if (s != NATS_OK) { pushstatus(L, s); return 2; }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- the forwarder, from the Lua driver --------------------------------- */

static fwd *checkfwd(lua_State *L) {
  conn *c = checkconn(L);
  if (c->f == NULL) luaL_error(L, "the NATS connection has no forwarder");
  return c->f;
}

/* A copy of the string argument idx, its length in *len. */
static char *dupstring(lua_State *L, int idx, size_t *len) {
  const char *s = luaL_checklstring(L, idx, len);
  char *d = dupbytes(s, *len);
  if (d == NULL) luaL_error(L, "not enough memory");
  return d;
}

/*
** conn:start(stats, topic, mine_send, mine_feedback, lead_send,
**            lead_feedback, on_presence, on_absence) -> pid
** Spawns the forwarder, by the calling process (the driver): stats from
** sys.cluster_stats(); topic, a record of cluster.topic's type; our
** envelopes (the items version, kind, node and incarnation of a send or
** feedback, encoded one after the other: no wrapper, no array head), and
** every node's up to its name, for sends and feedback;
** on_presence(orientation, interest, topic) and on_absence(orientation,
** interest, topic, reason), called when a local role appears and goes.
*/
static int c_start(lua_State *L) {
  conn *c = checkconn(L);
  mkd_count *stats = mkd_checkcount(L, 2, stat_names);
  mk_term *topic = mkl_checkterm(L, 3, "start");
  mk_proc *p = mkl_current(L);
  fwd *f;
  unsigned char *e;
  size_t elen;
  int k;
  if (topic->kind != MK_REC || topic->n != 1) {
    mk_unref(topic);
    return luaL_argerror(L, 3, "not a record of one field");
  }
  luaL_checktype(L, 8, LUA_TFUNCTION);
  luaL_checktype(L, 9, LUA_TFUNCTION);
  if (p == NULL) { mk_unref(topic); return luaL_error(L, "start: not inside a market process"); }
  if (c->f != NULL) { mk_unref(topic); return luaL_error(L, "start: a forwarder runs already"); }
  if ((f = calloc(1, sizeof *f)) == NULL) {
    mk_unref(topic);
    return luaL_error(L, "not enough memory");
  }
  f->refs = 1;                       /* the conn's; c_close (or the GC) lets go */
  f->cbref = LUA_NOREF;
  f->rt = topic->v.rt;
  mk_rtype_ref(f->rt);
  mk_unref(topic);
  f->stats = stats;
  stats->refs++;
  c->f = f;                          /* from here c_close cleans up */
  for (k = 0; k < 2; k++) {
    f->mine[k] = dupstring(L, 4 + k, &f->minelen[k]);
    f->lead[k] = dupstring(L, 6 + k, &f->leadlen[k]);
  }
  if ((e = mk_cbor_encode(mk_nil(), &elen)) == NULL) return luaL_error(L, "not enough memory");
  memcpy(f->wrapper, e, sizeof f->wrapper);
  free(e);
  /* A batch's wrapper, array head (9 bytes at most) and envelope. */
  f->room = sizeof f->wrapper + 9 + (f->minelen[0] > f->minelen[1] ? f->minelen[0] : f->minelen[1]);
  lua_createtable(L, 3, 0);
  f->L = lua_newthread(L);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 8);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, 9);
  lua_rawseti(L, -2, 3);
  f->cbref = luaL_ref(L, LUA_REGISTRYINDEX);
  f->nc = c->nc;
  f->connected = 1;
  f->max_payload = max_payload_of(f->nc);
  f->vm = mk_proc_vm(p);
  f->driver = mk_proc_pid(p);
  f->refs++;                         /* the process's, released by fwd_destroy */
  lua_pushfstring(L, "%s data", mk_proc_name(p) ? mk_proc_name(p) : "cluster");
  f->pid = mk_spawn(p, &fwd_behavior, f, lua_tostring(L, -1), NULL);
  lua_pushinteger(L, (lua_Integer)f->pid);
  return 1;
}

/* conn:node(name, subject, lead_send, lead_feedback): a node we hear from,
** under its present incarnation (its envelopes, as conn:start's, say
** which). */
static int c_node(lua_State *L) {
  fwd *f = checkfwd(L);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  rnode *n = node_find(f, name, len, NULL), *fresh;
  int k;
  if (n != NULL) flush(f, n);        /* under the envelopes it was made for */
  if (n == NULL) {
    if ((fresh = calloc(1, sizeof *fresh)) == NULL) return luaL_error(L, "not enough memory");
    if ((fresh->name = dupbytes(name, len)) == NULL) {
      free(fresh);
      return luaL_error(L, "not enough memory");
    }
    fresh->nlen = len;
    fresh->next = f->nodes;
    f->nodes = n = fresh;
  }
  free(n->subject);
  n->subject = NULL;
  n->subject = dupstring(L, 3, &len);
  for (k = 0; k < 2; k++) {
    free(n->lead[k]);
    n->lead[k] = NULL;
    n->leadlen[k] = 0;
    n->lead[k] = dupstring(L, 4 + k, &n->leadlen[k]);
  }
  return 0;
}

/* conn:forget(name): the node and its roles are gone. */
static int c_forget(lua_State *L) {
  fwd *f = checkfwd(L);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  rnode **link, *n = node_find(f, name, len, &link);
  if (n != NULL) {
    flush(f, n);                     /* sent while it was known */
    *link = n->next;
    node_free(n);
  }
  return 0;
}

static rnode *checknode(lua_State *L, fwd *f) {
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  rnode *n = node_find(f, name, len, NULL);
  if (n == NULL) luaL_error(L, "no node %s", name);
  return n;
}

/* conn:role(name, id, orientation, topic): node name holds that role. */
static int c_role(lua_State *L) {
  fwd *f = checkfwd(L);
  rnode *n = checknode(L, f);
  int64_t id = luaL_checkinteger(L, 3);
  static const char *const os[] = {"publisher", "subscriber", NULL};
  mk_orientation o = luaL_checkoption(L, 4, NULL, os) == 0 ? MK_PUBLISHER : MK_SUBSCRIBER;
  mk_term *t;
  if (n->nroles == n->maxroles) {
    size_t max = n->maxroles ? 2 * n->maxroles : 8;
    rrole *r = realloc(n->roles, max * sizeof *r);
    if (r == NULL) return luaL_error(L, "not enough memory");
    n->roles = r;
    n->maxroles = max;
  }
  t = mkl_checkterm(L, 5, "role");
  n->roles[n->nroles].id = id;
  n->roles[n->nroles].o = o;
  n->roles[n->nroles].topic = t;
  n->nroles++;
  return 0;
}

/* conn:unrole(name, id): node name's role id is gone. */
static int c_unrole(lua_State *L) {
  fwd *f = checkfwd(L);
  rnode *n = checknode(L, f);
  int64_t id = luaL_checkinteger(L, 3);
  size_t i;
  for (i = 0; i < n->nroles; i++)
    if (n->roles[i].id == id) {
      mk_unref(n->roles[i].topic);
      n->roles[i] = n->roles[--n->nroles];
      break;
    }
  return 0;
}

/* conn:connected(yes): whether messages can be published (the driver's
** view: from its handling of "disconnected" to that of "reconnected", they
** are dropped and counted). */
static int c_connected(lua_State *L) {
  fwd *f = checkfwd(L);
  flush_all(f);
  f->connected = lua_toboolean(L, 2);
  if (f->connected) f->max_payload = max_payload_of(f->nc);   /* another server, maybe */
  return 0;
}

/* conn:oversize() -> the count of sends and feedback dropped, since the
** last call, for being larger alone than the server's max_payload. */
static int c_oversize(lua_State *L) {
  fwd *f = checkfwd(L);
  lua_pushinteger(L, (lua_Integer)f->oversize);
  f->oversize = 0;
  return 1;
}

/* conn:max_payload() -> the largest message the server takes, in bytes
** (0: not known, not connected). */
static int c_max_payload(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)max_payload_of(checkconn(L)->nc));
  return 1;
}

/* conn:heard(name) -> when node name's last send or feedback reached the
** queue (ms, as conn:next's at), or nil: none, or not known here. */
static int c_heard(lua_State *L) {
  fwd *f = checkfwd(L);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  rnode *n = node_find(f, name, len, NULL);
  if (n == NULL || n->heard == 0) return 0;
  lua_pushnumber(L, n->heard);
  return 1;
}

/* conn:deliver(kind, body): send ("send") or feedback body here, by the
** calling process, for another node: the forwarder does not send it on. */
static int c_deliver(lua_State *L) {
  fwd *f = checkfwd(L);
  static const char *const kinds[] = {"send", "feedback", NULL};
  int k = luaL_checkoption(L, 2, NULL, kinds);
  mk_proc *p = mkl_current(L);
  mk_term *body;
  if (p == NULL) return luaL_error(L, "deliver: not inside a market process");
  body = mkl_checkterm(L, 3, "deliver");
  deliver(f, p, k == 0 ? K_SEND : K_FEEDBACK, body);
  mk_unref(body);
  return 0;
}

static int c_dropped(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  size_t n = 0;
  if (c->q) {
    pthread_mutex_lock(&c->q->mu);
    n = c->q->dropped;
    pthread_mutex_unlock(&c->q->mu);
  }
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int l_host_pid(lua_State *L) {
  char host[256];
  if (gethostname(host, sizeof host) != 0) strcpy(host, "localhost");
  host[sizeof host - 1] = '\0';
  lua_pushstring(L, host);
  lua_pushinteger(L, (lua_Integer)getpid());
  return 2;
}

void mkd_open_cluster(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"fd", c_fd}, {"next", c_next}, {"subscribe", c_subscribe},
    {"unsubscribe", c_unsubscribe}, {"publish", c_publish}, {"dropped", c_dropped},
    {"waiting", c_waiting}, {"start", c_start}, {"node", c_node}, {"forget", c_forget},
    {"role", c_role}, {"unrole", c_unrole}, {"connected", c_connected}, {"heard", c_heard},
    {"deliver", c_deliver}, {"oversize", c_oversize}, {"max_payload", c_max_payload},
    {"close", c_close}, {NULL, NULL}};
  if (luaL_newmetatable(L, CONN_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, c_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_cluster_stats);
  lua_setfield(L, -2, "cluster_stats");
  lua_pushcfunction(L, l_cluster_clock);
  lua_setfield(L, -2, "cluster_clock");
  lua_pushcfunction(L, l_nats_connect);
  lua_setfield(L, -2, "nats_connect");
  lua_pushcfunction(L, l_host_pid);
  lua_setfield(L, -2, "host_pid");
}

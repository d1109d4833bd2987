/*
** lcluster.c: a NATS connection for the cluster driver (drivers/cluster.lua),
** through libnats (internal: part of `market.sys`, not of the public API).
**
**   sys.nats_connect(urls, name [, timeout_ms]) -> conn | nil, msg
**       urls: a list of nats:// URLs (servers of one NATS cluster); name:
**       the connection's name as the server shows it.  Reconnects for ever
**       (every 250 ms, the servers in turn); connecting the first time
**       waits for the server up to timeout_ms (default 2000).
**   conn:fd()                  -> a descriptor, readable while events wait
**   conn:next()                -> "message", subject, data, at
**                               | "disconnected" | "reconnected" | "closed"
**                               | nil (nothing waits: the descriptor is
**                                 quiet until something new arrives)
**                               (at: when the message reached the queue, in
**                               market.now()'s milliseconds)
**   conn:waiting()             -> when the oldest event waiting reached the
**                                 queue (ms, as at), or nil if none waits
**   conn:subscribe(subject)    -> sid | nil, msg
**   conn:unsubscribe(sid)
**   conn:publish(subject, data) -> true | nil, msg   (see "Writing")
**   conn:dropped()             -> messages dropped because the queue was full
**   conn:close()               (also on garbage collection)
**   sys.host_pid()             -> host name, pid (for default node names)
**   sys.unifies(a, b)          -> whether terms a and b unify (the driver's
**                                 match of a message against a remote role:
**                                 market.unify would make the unifier too)
**
** Threads.  libnats runs its own threads: message handlers, the
** disconnected/reconnected/closed callbacks, pings and reconnection.  Those
** callbacks only copy bytes into a mutex-protected queue and, when the queue
** was empty, write to an eventfd; the loop thread subscribes to the
** eventfd's readability with the ground event every driver uses
** (market.ground.readable), so it works in a nested VM through an event
** relay too.  This is the "ev_async and a locked queue" in the form
** market's drivers already have (as sys.resolve's pipe).  No Lua state, term
** or VM is touched off the loop thread.
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
** The queue holds at most QUEUE_MAX bytes: a message arriving beyond that
** is dropped and counted (nothing is buffered without bound).
*/
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include <lua.h>
#include <lauxlib.h>

#include "mkl.h"
#include "mkd.h"

#define CONN_MT "market.sys.nats"
#define QUEUE_MAX ((size_t)64 << 20)
#define WRITE_DEADLINE_MS 1000
#define CLOSE_FLUSH_MS 500

enum { EV_MESSAGE, EV_DISCONNECTED, EV_RECONNECTED, EV_CLOSED };
static const char *const ev_names[] = {"message", "disconnected", "reconnected", "closed"};

/* One event: a message's subject and data side by side in bytes[]. */
typedef struct item {
  struct item *next;
  double at;                 /* when it was queued: ms, as market.now() */
  int kind;
  size_t slen, dlen;
  char bytes[];
} item;

typedef struct queue {
  pthread_mutex_t mu;
  int refs;                  /* the userdata, the connection, each subscription */
  int efd;                   /* the eventfd; -1 once the userdata closed it */
  item *head, *tail;         /* owned */
  size_t bytes;              /* of the messages in the queue */
  size_t dropped;
} queue;

typedef struct conn {
  queue *q;                  /* a reference, NULL once closed */
  natsConnection *nc;        /* owned, NULL once closed */
  natsSubscription **subs;   /* owned array; a slot is NULL when unsubscribed */
  int nsubs;
} conn;

static void queue_release(queue *q) {
  int last;
  item *it, *next;
  pthread_mutex_lock(&q->mu);
  last = --q->refs == 0;
  pthread_mutex_unlock(&q->mu);
  if (!last) return;
  for (it = q->head; it; it = next) { next = it->next; free(it); }
  pthread_mutex_destroy(&q->mu);
  free(q);
}

/* The wall clock in ms, as market.now() reads it (libev's ev_time is
** CLOCK_REALTIME too). */
static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* On a libnats thread: queue an event, waking the loop when the queue was
** empty.  Nothing is queued once the loop side has closed. */
static void push(queue *q, int kind, const char *subj, size_t slen, const char *data,
                 size_t dlen) {
  item *it = malloc(sizeof *it + slen + dlen);
  if (it == NULL) return;            /* out of memory: dropped, like a full queue */
  it->next = NULL;
  it->at = now_ms();
  it->kind = kind;
  it->slen = slen;
  it->dlen = dlen;
  if (slen) memcpy(it->bytes, subj, slen);
  if (dlen) memcpy(it->bytes + slen, data, dlen);
  pthread_mutex_lock(&q->mu);
  if (q->efd < 0 || (kind == EV_MESSAGE && q->bytes + slen + dlen > QUEUE_MAX)) {
    if (q->efd >= 0) q->dropped++;
    pthread_mutex_unlock(&q->mu);
    free(it);
    return;
  }
  if (q->tail) q->tail->next = it;
  else {
    uint64_t one = 1;
    ssize_t w;
    q->head = it;
    do { w = write(q->efd, &one, sizeof one); } while (w < 0 && errno == EINTR);
  }
  q->tail = it;
  if (kind == EV_MESSAGE) q->bytes += slen + dlen;
  pthread_mutex_unlock(&q->mu);
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *ud) {
  const char *subj = natsMsg_GetSubject(m);
  int n = natsMsg_GetDataLength(m);
  push(ud, EV_MESSAGE, subj, strlen(subj), natsMsg_GetData(m), n > 0 ? (size_t)n : 0);
  natsMsg_Destroy(m);
}

static void on_disconnected(natsConnection *nc, void *ud) { push(ud, EV_DISCONNECTED, NULL, 0, NULL, 0); }
static void on_reconnected(natsConnection *nc, void *ud) { push(ud, EV_RECONNECTED, NULL, 0, NULL, 0); }

/* The connection's last callback: its reference goes. */
static void on_closed(natsConnection *nc, void *ud) {
  push(ud, EV_CLOSED, NULL, 0, NULL, 0);
  queue_release(ud);
}

/* A subscription's handler has run for the last time. */
static void on_sub_complete(void *ud) { queue_release(ud); }

/* libnats reports asynchronous errors (a slow consumer) here; the cluster
** driver finds out through sequence gaps, so they are only ignored. */
static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus s, void *ud) {}

/* nil and libnats's last error on this thread, without the "(file.c:N): "
** it starts with, in lower case as the drivers' messages are. */
static void pushstatus(lua_State *L, natsStatus s) {
  const char *last = nats_GetLastError(NULL), *p;
  if (last == NULL || *last == '\0') last = natsStatus_GetText(s);
  if (*last == '(' && (p = strstr(last, "): ")) != NULL) last = p + 3;
  lua_pushnil(L);
  lua_pushfstring(L, "%c%s", tolower((unsigned char)*last), *last ? last + 1 : "");
}

static conn *checkconn(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  if (c->nc == NULL) luaL_error(L, "the NATS connection is closed");
  return c;
}

static int c_close(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  queue *q = c->q;
  int i, efd;
  if (q == NULL) return 0;
  for (i = 0; i < c->nsubs; i++) {
    if (c->subs[i] == NULL) continue;
    natsSubscription_Unsubscribe(c->subs[i]);
    natsSubscription_Destroy(c->subs[i]);
  }
  free(c->subs);
  c->subs = NULL;
  c->nsubs = 0;
  if (c->nc) {
    /* What was published last (the driver's "bye") reaches the server
    ** before the connection goes: Close alone may drop what libnats's
    ** flusher has not written yet.  Bounded: a server that does not answer
    ** holds the loop CLOSE_FLUSH_MS at most. */
    if (natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED)
      natsConnection_FlushTimeout(c->nc, CLOSE_FLUSH_MS);
    natsConnection_Close(c->nc);
    natsConnection_Destroy(c->nc);
    c->nc = NULL;
  }
  /* From here on the callbacks queue nothing and write nowhere. */
  pthread_mutex_lock(&q->mu);
  efd = q->efd;
  q->efd = -1;
  pthread_mutex_unlock(&q->mu);
  if (efd >= 0) mkd_close_watched(efd);
  c->q = NULL;
  queue_release(q);
  return 0;
}

/* libnats's threads call back into this code (the handlers above) until
** it has let go of every connection, which may be after the Lua state that
** made them is closed: stock lua5.4 then unloads market.so, and a late
** callback would jump into unmapped code.  So the first connection pins
** this object in memory for the life of the process (RTLD_NODELETE); a
** program that never connects unloads as before. */
static void pin_self(void) {
  static int pinned;
  Dl_info info;
  if (pinned) return;
  pinned = 1;
  if (dladdr((void *)pin_self, &info) && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static int l_nats_connect(lua_State *L) {
  lua_Integer timeout = luaL_optinteger(L, 3, 2000);
  const char *name = luaL_checkstring(L, 2);
  const char **urls;
  natsOptions *o = NULL;
  natsStatus s;
  queue *q;
  conn *c;
  int i, n;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = (int)luaL_len(L, 1);
  luaL_argcheck(L, n > 0, 1, "no NATS server URL");
  urls = lua_newuserdatauv(L, (size_t)n * sizeof *urls, 0);   /* freed by the GC */
  for (i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    urls[i] = lua_tostring(L, -1);
    luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1, "NATS server URLs must be strings");
    lua_pop(L, 1);                   /* the table keeps the string alive */
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
  if ((s = natsOptions_Create(&o)) != NATS_OK) { pushstatus(L, s); return 2; }
  if ((s = natsOptions_SetServers(o, urls, n)) != NATS_OK ||
      (s = natsOptions_SetName(o, name)) != NATS_OK ||
      (s = natsOptions_SetTimeout(o, timeout)) != NATS_OK ||
      (s = natsOptions_SetAllowReconnect(o, true)) != NATS_OK ||
      (s = natsOptions_SetMaxReconnect(o, -1)) != NATS_OK ||
      (s = natsOptions_SetReconnectWait(o, 250)) != NATS_OK ||
      /* Nothing is buffered while disconnected (DESIGN §7): the smallest
      ** buffer libnats takes (0 would mean its default, 8 MiB). */
      (s = natsOptions_SetReconnectBufSize(o, 1)) != NATS_OK ||
      (s = natsOptions_SetWriteDeadline(o, WRITE_DEADLINE_MS)) != NATS_OK ||
      /* A node hears nothing it published itself. */
      (s = natsOptions_SetNoEcho(o, true)) != NATS_OK ||
      /* One delivery thread for every subscription of the connection (the
      ** library's pool, one worker by default): what a node published to
      ** "all" and to our own subject is queued in the order the server
      ** sent it.  With a thread per subscription a node's "bye" could
      ** overtake the snapshot it sent before, which then brought it back. */
      (s = natsOptions_UseGlobalMessageDelivery(o, true)) != NATS_OK ||
      (s = natsOptions_SetErrorHandler(o, on_error, NULL)) != NATS_OK ||
      (s = natsOptions_SetDisconnectedCB(o, on_disconnected, q)) != NATS_OK ||
      (s = natsOptions_SetReconnectedCB(o, on_reconnected, q)) != NATS_OK ||
      (s = natsOptions_SetClosedCB(o, on_closed, q)) != NATS_OK) {
    natsOptions_Destroy(o);
    pushstatus(L, s);
    return 2;
  }
  pin_self();
  q->refs++;                         /* the connection's, released by on_closed */
  s = natsConnection_Connect(&c->nc, o);
  natsOptions_Destroy(o);
  if (s != NATS_OK) {
    q->refs--;                       /* no connection, no callbacks */
    c->nc = NULL;
    pushstatus(L, s);
    return 2;
  }
  return 1;
}

static int c_fd(lua_State *L) {
  conn *c = checkconn(L);
  lua_pushinteger(L, c->q->efd);
  return 1;
}

static int c_next(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  queue *q = c->q;
  item *it;
  if (q == NULL) return 0;
  pthread_mutex_lock(&q->mu);
  it = q->head;
  if (it) {
    if ((q->head = it->next) == NULL) q->tail = NULL;
    if (it->kind == EV_MESSAGE) q->bytes -= it->slen + it->dlen;
  } else {
    /* Empty: quiet the eventfd, under the lock, so that the next push
    ** (which finds the queue empty) wakes the loop again. */
    uint64_t v;
    ssize_t r;
    do { r = read(q->efd, &v, sizeof v); } while (r < 0 && errno == EINTR);
  }
  pthread_mutex_unlock(&q->mu);
  if (it == NULL) return 0;
  lua_pushstring(L, ev_names[it->kind]);
  if (it->kind != EV_MESSAGE) { free(it); return 1; }
  lua_pushlstring(L, it->bytes, it->slen);
  lua_pushlstring(L, it->bytes + it->slen, it->dlen);
  lua_pushnumber(L, it->at);
  free(it);
  return 4;
}

/* The cluster driver judges a node lost by the time its last message
** reached the queue, against the time of the oldest one still waiting:
** a loop that fell behind must not take a busy node for a lost one. */
static int c_waiting(lua_State *L) {
  conn *c = luaL_checkudata(L, 1, CONN_MT);
  double at = 0;
  int some = 0;
  if (c->q) {
    pthread_mutex_lock(&c->q->mu);
    if ((some = c->q->head != NULL)) at = c->q->head->at;
    pthread_mutex_unlock(&c->q->mu);
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
  s = natsConnection_Subscribe(&sub, c->nc, subject, on_msg, c->q);
  if (s == NATS_OK) {
    pthread_mutex_lock(&c->q->mu);
    c->q->refs++;                    /* the handler's, released by on_sub_complete */
    pthread_mutex_unlock(&c->q->mu);
    if ((s = natsSubscription_SetOnCompleteCB(sub, on_sub_complete, c->q)) != NATS_OK) {
      /* Not set: this subscription's reference can never be released, so
      ** the queue outlives the connection (a small leak, never a crash). */
      natsSubscription_Unsubscribe(sub);
      natsSubscription_Destroy(sub);
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
  natsSubscription_Unsubscribe(c->subs[sid - 1]);
  natsSubscription_Destroy(c->subs[sid - 1]);
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
  s = natsConnection_Publish(c->nc, subject, data, (int)len);
  if (s != NATS_OK) { pushstatus(L, s); return 2; }
  lua_pushboolean(L, 1);
  return 1;
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

static int l_unifies(lua_State *L) {
  mk_term *a = mkl_checkterm(L, 1, "unifies"), *b;
  const char *err;
  int r;
  if ((b = mkl_toterm(L, 2, &err)) == NULL) { mk_unref(a); return luaL_error(L, "unifies: %s", err); }
  r = mk_unifies(a, b);
  mk_unref(a);
  mk_unref(b);
  lua_pushboolean(L, r);
  return 1;
}

void mkd_open_cluster(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"fd", c_fd}, {"next", c_next}, {"subscribe", c_subscribe},
    {"unsubscribe", c_unsubscribe}, {"publish", c_publish}, {"dropped", c_dropped},
    {"waiting", c_waiting},
    {"close", c_close}, {NULL, NULL}};
  if (luaL_newmetatable(L, CONN_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, c_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_nats_connect);
  lua_setfield(L, -2, "nats_connect");
  lua_pushcfunction(L, l_host_pid);
  lua_setfield(L, -2, "host_pid");
  lua_pushcfunction(L, l_unifies);
  lua_setfield(L, -2, "unifies");
}

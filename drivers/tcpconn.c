/*
** tcpconn.c: the TCP driver's connection manager, a native process.
**
** One manager per connection (docs/tcp.md): it publishes the inbound flow
** tcp.channel(remote, local, _), subscribes to the outbound flow
** tcp.channel(local, remote, _), owns the socket, and speaks the whole
** protocol of docs/tcp.md (chunks as read, EOF and half-close, output
** queue with backpressure and a hard limit, linger, failures as absence
** reasons).  Like the rest of the driver it is written against ground
** events only (market:readable / writable / alarm subscriptions, added with
** mk_add_endpoint like any process's), never libev, so it runs unchanged
** in a nested VM whose event relay carries those subscriptions up.
**
** It is C rather than Lua because it is the data path: every chunk read
** and every chunk written goes through it.  As a Lua process it cost a
** coroutine activation, an action table and a copy of the payload per
** chunk each way; here a chunk read is one string term sent, and a chunk
** to write is written from the term that carried it.
**
** The Lua half of the driver (drivers/tcp.lua) decides when managers are
** spawned, through these market.sys functions, which act on behalf of the
** calling Lua process (they are its spawn actions):
**
**   sys.tcp_accept(lsock, loc, lport, max, high, low, hard, readsize, linger_ms, stats)
**       -> n | nil, msg
**       accept up to max connections on listening socket lsock and spawn a
**       manager for each (remote tcp.address(host, port), local `loc`, the
**       listener's port `lport`); n: how many (fewer than max: nothing more
**       to accept now).  nil, msg: accept failed (after n spawned).
**   sys.tcp_manage(remote, loc, name, high, low, hard, readsize, linger_ms, stats)
**       -> pid
**       spawn the manager of an outbound connection (loc a tcp.handle); it
**       resolves and connects by itself.
**   sys.tcp_stats() -> stats
**       counters shared by the managers given it: stats.max_queued,
**       stats.pauses, stats.overflows (read and set like table fields).
*/
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "mkl.h"
#include "mkd.h"

#define READ_MAX 65536
#define STATS_MT "market.sys.tcp_stats"

/* ---- counters ----------------------------------------------------------- */

/* Shared by the managers of one market.tcp module and the module itself
** (the userdata): freed by the last to let go. */
typedef struct tstats {
  uint32_t refs;
  lua_Integer max_queued, pauses, overflows;
} tstats;

static void stats_release(tstats *s) {
  if (s != NULL && --s->refs == 0) free(s);
}

typedef struct statsbox { tstats *s; } statsbox;

static int stats_index(lua_State *L) {
  tstats *s = ((statsbox *)luaL_checkudata(L, 1, STATS_MT))->s;
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "max_queued") == 0) lua_pushinteger(L, s->max_queued);
  else if (strcmp(k, "pauses") == 0) lua_pushinteger(L, s->pauses);
  else if (strcmp(k, "overflows") == 0) lua_pushinteger(L, s->overflows);
  else lua_pushnil(L);
  return 1;
}

static int stats_newindex(lua_State *L) {
  tstats *s = ((statsbox *)luaL_checkudata(L, 1, STATS_MT))->s;
  const char *k = luaL_checkstring(L, 2);
  lua_Integer v = luaL_checkinteger(L, 3);
  if (strcmp(k, "max_queued") == 0) s->max_queued = v;
  else if (strcmp(k, "pauses") == 0) s->pauses = v;
  else if (strcmp(k, "overflows") == 0) s->overflows = v;
  else return luaL_error(L, "tcp.stats has no field '%s'", k);
  return 0;
}

static int stats_gc(lua_State *L) {
  statsbox *b = luaL_checkudata(L, 1, STATS_MT);
  stats_release(b->s);
  b->s = NULL;
  return 0;
}

static int stats_tostring(lua_State *L) {
  tstats *s = ((statsbox *)luaL_checkudata(L, 1, STATS_MT))->s;
  lua_pushfstring(L, "tcp.stats {max_queued = %I, pauses = %I, overflows = %I}",
                  s->max_queued, s->pauses, s->overflows);
  return 1;
}

static int l_tcp_stats(lua_State *L) {
  statsbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->s = NULL;
  luaL_setmetatable(L, STATS_MT);
  b->s = calloc(1, sizeof *b->s);
  if (b->s == NULL) return luaL_error(L, "out of memory");
  b->s->refs = 1;
  return 1;
}

/* ---- a connection ------------------------------------------------------- */

/* Ground-event endpoints held (bits of tconn.watching). */
enum { W_RD = 1, W_WR = 2, W_LINGER = 4, W_CONN = 8, W_RESOLVE = 16 };
static const char *const watch_names[] = { "rd", "wr", "linger", "conn", "resolve" };

typedef struct tconn {
  mk_term *remote;            /* tcp.address(host, port) */
  mk_term *loc;               /* tcp.listener(port) | tcp.handle(id) */
  mk_term *lport;             /* inbound: the listener's port; NULL: outbound */
  mk_rtype *channel;          /* tcp-channel/3 */
  mk_term *rd, *wr;           /* market:readable(fd), market:writable(fd) */
  int fd;                     /* -1: none (yet, or any more) */
  /* tunables, as they were when the connection started */
  size_t high, low, hard, readsize;
  int64_t linger_ms;
  tstats *stats;              /* counted reference */
  lua_State *L;               /* the main thread, for warn() */
  int readers, senders;       /* peers on the inbound / outbound flow */
  uint8_t seen, connected, paused, eof_in, eof_out, closing, warned, done;
  uint8_t watching;           /* W_* */
  /* output queue: a ring of string terms and EOF */
  mk_term **q;
  size_t qcap, qhead, qlen;
  size_t off;                 /* bytes of the head already written */
  size_t qbytes;              /* bytes queued */
  size_t overrun;             /* bytes queued while paused */
  /* connecting (outbound) */
  mkd_resolve_job *job;
  int rfd;                    /* the resolver's pipe, -1 */
  struct addrinfo *numeric;   /* owned: a numeric host's addresses */
  const struct addrinfo *addrs, *ai;   /* the list being tried; the last tried */
  char lasterr[128];
} tconn;

static char rbuf[READ_MAX];

static mk_rtype *rtype(const char *label, uint32_t arity, const char *const *names) {
  return mk_rtype_get(label, strlen(label), arity, names);
}

static const char *const channel_fields[] = { "source", "destination", "subpacket" };

/* tcp.channel(a, b, c), with c stolen. */
static mk_term *channel(tconn *c, mk_term *a, mk_term *b, mk_term *sub) {
  return mk_rec(c->channel, mk_ref(a), mk_ref(b), sub);
}

static mk_term *ground1(mk_rtype *rt, int64_t v) { return mk_rec(rt, mk_int(v)); }

static void watch(mk_proc *p, tconn *c, int bit, mk_term *topic) {
  mk_role r;
  int i;
  if (c->watching & bit) return;
  c->watching |= (uint8_t)bit;
  for (i = 0; (1 << i) != bit; i++) {}
  r.orientation = MK_SUBSCRIBER;
  r.interest = MK_PARTICIPANT;
  r.topic = topic;
  mk_add_endpoint(p, watch_names[i], 0, r);
}

static void unwatch(mk_proc *p, tconn *c, int bit) {
  int i;
  if (!(c->watching & bit)) return;
  c->watching &= (uint8_t)~bit;
  for (i = 0; (1 << i) != bit; i++) {}
  mk_delete_endpoint(p, watch_names[i], 0, NULL);
}

static void set_fd(tconn *c, int fd) {
  mk_unref(c->rd);
  mk_unref(c->wr);
  c->rd = c->wr = NULL;
  c->fd = fd;
  if (fd >= 0) {
    c->rd = ground1(mk_ground_readable, fd);
    c->wr = ground1(mk_ground_writable, fd);
  }
}

static void close_resolver(tconn *c) {
  if (c->job) { mkd_resolve_release(c->job); c->job = NULL; }
  if (c->rfd >= 0) { close(c->rfd); c->rfd = -1; }   /* after: the thread writes no more */
}

/* Stop watching, then close (never the other way round: the fd number may
** be reused at once), then quit with reason (NULL: normal). */
static void finish(mk_proc *p, tconn *c, const char *reason) {
  int bit;
  mk_term *r;
  if (c->done) return;
  for (bit = 1; bit <= W_RESOLVE; bit <<= 1) unwatch(p, c, bit);
  close_resolver(c);
  if (c->fd >= 0) { close(c->fd); set_fd(c, -1); }
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
  if (c->connected && !c->eof_in && !c->closing && c->readers > 0) watch(p, c, W_RD, c->rd);
  else unwatch(p, c, W_RD);
}

static void on_readable(mk_proc *p, tconn *c) {
  ssize_t n;
  mk_term *m;
  if (c->fd < 0) return;
  do {
    n = recv(c->fd, rbuf, c->readsize, 0);
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    m = channel(c, c->remote, c->loc, mk_str(rbuf, (size_t)n));
    mk_send(p, m);
    mk_unref(m);
  } else if (n == 0) {
    c->eof_in = 1;
    update_reading(p, c);
    m = channel(c, c->remote, c->loc, mk_eof());
    mk_send(p, m);
    mk_unref(m);
  } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
    finish_errno(p, c, errno);
  }
}

/* After the queue changed: backpressure, the writable watch, closing. */
static void update_flow(mk_proc *p, tconn *c) {
  if (c->stats && (lua_Integer)c->qbytes > c->stats->max_queued)
    c->stats->max_queued = (lua_Integer)c->qbytes;
  if (c->overrun > c->hard) {
    char buf[128];
    if (c->stats) c->stats->overflows++;
    snprintf(buf, sizeof buf, "%zu bytes sent despite backpressure: the peer is not reading",
             c->overrun);
    finish(p, c, buf);
    return;
  }
  if (!c->paused && c->qbytes > c->high) {
    mk_rtype *rt = rtype("tcp-backpressure", 2, NULL);
    mk_role r;
    c->paused = 1;
    if (c->stats) c->stats->pauses++;
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
  if (c->qlen > 0) {
    watch(p, c, W_WR, c->wr);
  } else {
    unwatch(p, c, W_WR);
    if (c->closing) finish(p, c, NULL);
  }
}

static mk_term *qpop(tconn *c) {
  mk_term *t = c->q[c->qhead];
  c->q[c->qhead] = NULL;
  c->qhead = (c->qhead + 1) & (c->qcap - 1);
  c->qlen--;
  c->off = 0;
  return t;
}

static int qpush(tconn *c, mk_term *t) {
  if (c->qlen == c->qcap) {
    size_t ncap = c->qcap ? c->qcap * 2 : 4, i;
    mk_term **nq = malloc(ncap * sizeof *nq);
    if (nq == NULL) return -1;
    for (i = 0; i < c->qlen; i++) nq[i] = c->q[(c->qhead + i) & (c->qcap - 1)];
    free(c->q);
    c->q = nq;
    c->qcap = ncap;
    c->qhead = 0;
  }
  c->q[(c->qhead + c->qlen) & (c->qcap - 1)] = mk_ref(t);
  c->qlen++;
  return 0;
}

static void flush(mk_proc *p, tconn *c) {
  while (c->qlen > 0) {
    mk_term *item = c->q[c->qhead];
    if (item->kind == MK_EOF) {
      mk_unref(qpop(c));
      if (shutdown(c->fd, SHUT_WR) != 0 && errno != ENOTCONN) { finish_errno(p, c, errno); return; }
    } else {
      ssize_t n;
      do {
        n = send(c->fd, mk_strdata(item) + c->off, item->n - c->off, MSG_NOSIGNAL);
      } while (n < 0 && errno == EINTR);
      if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) { finish_errno(p, c, errno); return; }
        n = 0;
      }
      c->qbytes -= (size_t)n;
      c->off += (size_t)n;
      if (c->off < item->n) break;      /* the socket is full */
      mk_unref(qpop(c));
    }
  }
  update_flow(p, c);
}

static void warn_once(tconn *c, const mk_term *d) {
  char *who, *what;
  if (c->warned || c->L == NULL) return;
  c->warned = 1;
  who = mk_repr_max(c->remote, MK_REPR_SHOWN, NULL);
  what = mk_repr_max(d, MK_REPR_SHOWN, NULL);
  lua_warning(c->L, "market.tcp: ", 1);
  lua_warning(c->L, who ? who : "?", 1);
  lua_warning(c->L, ": ignoring a non-string subpacket ", 1);
  lua_warning(c->L, what ? what : "?", 0);
  free(who);
  free(what);
}

static void on_out(mk_proc *p, tconn *c, mk_term *m) {
  mk_term *d = m->kind == MK_REC && m->n == 3 ? mk_items(m)[2] : m;
  if (c->eof_out || c->closing) return;
  if (d->kind == MK_EOF) {
    c->eof_out = 1;
  } else if (d->kind != MK_STR) {
    warn_once(c, d);
    return;
  } else if (d->n == 0) {
    return;
  } else {
    c->qbytes += d->n;
    if (c->paused) c->overrun += d->n;
  }
  if (qpush(c, d) != 0) { finish(p, c, "out of memory"); return; }
  /* Write at once unless already waiting for the socket to drain. */
  if (c->connected && !(c->watching & W_WR)) flush(p, c); else update_flow(p, c);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Peers: readers subscribe to the inbound flow, senders publish the
** outbound one.  When the last of them goes, flush and close. */
static void peers_changed(mk_proc *p, tconn *c) {
  mk_term *t;
  update_reading(p, c);
  if (!c->seen || c->readers + c->senders > 0 || c->closing) return;
  c->closing = 1;
  update_reading(p, c);
  if (!c->connected || c->qlen == 0) { finish(p, c, NULL); return; }
  t = ground1(mk_ground_alarm, (int64_t)floor(now_ms()) + c->linger_ms);
  watch(p, c, W_LINGER, t);
  mk_unref(t);
}

static void on_connected(mk_proc *p, tconn *c) {
  c->connected = 1;
  unwatch(p, c, W_CONN);
  update_reading(p, c);
  flush(p, c);
}

static int usable(const struct addrinfo *ai) {
  return ai->ai_family == AF_INET || ai->ai_family == AF_INET6;
}

static void try_next(mk_proc *p, tconn *c) {
  for (;;) {
    int fd, inprogress;
    const struct addrinfo *ai = c->ai ? c->ai->ai_next : c->addrs;
    while (ai && !usable(ai)) ai = ai->ai_next;
    c->ai = ai;
    if (ai == NULL) { finish(p, c, c->lasterr[0] ? c->lasterr : "no address"); return; }
    fd = mkd_tcp_connect(ai->ai_addr, ai->ai_addrlen, &inprogress);
    if (fd >= 0) {
      set_fd(c, fd);
      if (!inprogress) on_connected(p, c);
      else watch(p, c, W_CONN, c->wr);
      return;
    }
    mkd_strerror(errno, c->lasterr, sizeof c->lasterr);
  }
}

static void on_conn(mk_proc *p, tconn *c) {
  int err;
  if (c->fd < 0 || c->connected) return;
  err = mkd_so_error(c->fd);
  if (err == 0) { on_connected(p, c); return; }
  mkd_strerror(err, c->lasterr, sizeof c->lasterr);
  unwatch(p, c, W_CONN);
  close(c->fd);
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
  const struct addrinfo *res, *ai;
  const char *err = NULL;
  char buf[256];
  if (c->job == NULL || !mkd_resolve_poll(c->job, &res, &err, buf, sizeof buf)) return;
  unwatch(p, c, W_RESOLVE);
  close(c->rfd);                 /* the job stays: it holds the addresses */
  c->rfd = -1;
  if (res == NULL) { finish_host(p, c, "unknown host %s (%s)", err); return; }
  for (ai = res; ai && !usable(ai); ai = ai->ai_next) {}
  if (ai == NULL) { finish_host(p, c, "unknown host %s (%s)", "no address"); return; }
  c->addrs = res;
  c->ai = NULL;
  try_next(p, c);
}

static void start_connect(mk_proc *p, tconn *c) {
  mk_term *host = NULL, *port = NULL;
  const char *err = NULL;
  int rc;
  if (c->remote->kind == MK_REC && c->remote->n == 2) {
    host = mk_items(c->remote)[0];
    port = mk_items(c->remote)[1];
  }
  if (host == NULL || host->kind != MK_STR || port->kind != MK_INT ||
      port->v.i < 1 || port->v.i > 65535) {
    char *r = mk_repr_max(c->remote, MK_REPR_SHOWN, NULL);
    size_t n = (r ? strlen(r) : 1) + 64;
    char *buf = malloc(n);
    if (buf) snprintf(buf, n, "bad address %s: want tcp.address(host, port 1..65535)", r ? r : "?");
    finish(p, c, buf ? buf : "bad address");
    free(buf);
    free(r);
    return;
  }
  rc = mkd_resolve_start(mk_strdata(host), (int)port->v.i, SOCK_STREAM, &c->numeric,
                         &c->job, &c->rfd, &err);
  if (rc < 0) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", err);
    buf[0] = (char)tolower((unsigned char)buf[0]);
    finish_host(p, c, "cannot resolve %s: %s", buf);
  } else if (rc == 0) {
    c->addrs = c->numeric;
    c->ai = NULL;
    try_next(p, c);
  } else {
    mk_term *t = ground1(mk_ground_readable, c->rfd);
    watch(p, c, W_RESOLVE, t);
    mk_unref(t);
  }
}

static void boot(mk_proc *p, tconn *c) {
  mk_role r;
  mk_term *w = mk_wild();
  r.interest = MK_PARTICIPANT;
  r.orientation = MK_PUBLISHER;
  r.topic = channel(c, c->remote, c->loc, w);
  mk_add_endpoint(p, "in", 0, r);
  mk_unref(r.topic);
  r.orientation = MK_SUBSCRIBER;
  r.topic = channel(c, c->loc, c->remote, w);
  mk_add_endpoint(p, "out", 0, r);
  mk_unref(r.topic);
  if (c->lport) {
    /* Inbound: the observer spawns a session when it sees us.  If the
    ** listener closes before anyone took this connection, close it. */
    static const char *const fields[] = { "port" };
    mk_rtype *rt = rtype("tcp-driver:listener-closed", 1, fields);
    r.topic = mk_rec(rt, mk_ref(c->lport));
    mk_add_endpoint(p, "listener", 0, r);
    mk_unref(r.topic);
    mk_rtype_unref(rt);
  } else {
    /* Outbound: the process that asked is here already; if it went away
    ** meanwhile, there is nobody to connect for (checked when everything
    ** now pending has run). */
    mk_yield(p, (void *)1);
    start_connect(p, c);
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
      else break;
      if (d > 0) c->seen = 1;
      peers_changed(p, c);
      break;
    }
    case MK_EV_MESSAGE:
      switch (e[0]) {
        case 'r': if (strcmp(e, "rd") == 0) on_readable(p, c);
                  else if (strcmp(e, "resolve") == 0) on_resolved(p, c);
                  break;
        case 'o': if (strcmp(e, "out") == 0) on_out(p, c, ev->message); break;
        case 'w': if (strcmp(e, "wr") == 0) flush(p, c); break;
        case 'c': if (strcmp(e, "conn") == 0) on_conn(p, c); break;
        case 'l':
          if (strcmp(e, "linger") == 0) {
            char buf[96];
            snprintf(buf, sizeof buf, "closed with unsent output after %lld ms",
                     (long long)c->linger_ms);
            finish(p, c, buf);
          } else if (strcmp(e, "listener") == 0 && !c->seen) {
            finish(p, c, NULL);
          }
          break;
        default: break;
      }
      break;
    case MK_EV_RESUME:
      if (!c->seen) finish(p, c, NULL);
      break;
    default:
      break;
  }
}

static void destroy(mk_proc *p) {
  tconn *c = mk_proc_data(p);
  if (c == NULL) return;
  while (c->qlen > 0) mk_unref(qpop(c));
  free(c->q);
  close_resolver(c);
  if (c->numeric) freeaddrinfo(c->numeric);
  if (c->fd >= 0) close(c->fd);
  set_fd(c, -1);
  mk_unref(c->remote);
  mk_unref(c->loc);
  mk_unref(c->lport);
  if (c->channel) mk_rtype_unref(c->channel);
  stats_release(c->stats);
  free(c);
}

static const mk_behavior tcpconn_behavior = { "tcp", handle, NULL, destroy, NULL };

/* ---- spawning, from Lua ------------------------------------------------- */

typedef struct config {
  size_t high, low, hard, readsize;
  int64_t linger_ms;
  tstats *stats;
} config;

static size_t checksize(lua_State *L, int idx) {
  lua_Integer v = luaL_checkinteger(L, idx);
  return v < 0 ? 0 : (size_t)v;
}

/* high, low, hard, readsize, linger_ms, stats from idx on. */
static void getconfig(lua_State *L, int idx, config *cfg) {
  statsbox *b;
  cfg->high = checksize(L, idx);
  cfg->low = checksize(L, idx + 1);
  cfg->hard = checksize(L, idx + 2);
  cfg->readsize = checksize(L, idx + 3);
  if (cfg->readsize == 0 || cfg->readsize > READ_MAX) cfg->readsize = READ_MAX;
  cfg->linger_ms = (int64_t)luaL_checkinteger(L, idx + 4);
  b = luaL_testudata(L, idx + 5, STATS_MT);
  cfg->stats = b ? b->s : NULL;
}

static mk_proc *caller(lua_State *L, const char *what) {
  mk_proc *p = mkl_current(L);
  if (p == NULL) luaL_error(L, "market.sys.%s: not inside a market process", what);
  if (mk_ground_readable == NULL) luaL_error(L, "market.sys.%s: no ground VM", what);
  return p;
}

/* A manager's data; takes the references remote, loc and lport (may be
** NULL) and the descriptor fd (-1: connect). */
static tconn *newconn(lua_State *L, const config *cfg, int fd, mk_term *remote, mk_term *loc,
                      mk_term *lport) {
  tconn *c = remote ? calloc(1, sizeof *c) : NULL;   /* remote: NULL if out of memory */
  if (c == NULL) {
    if (fd >= 0) close(fd);
    mk_unref(remote); mk_unref(loc); mk_unref(lport);
    return NULL;
  }
  c->remote = remote;
  c->loc = loc;
  c->lport = lport;
  c->channel = rtype("tcp-channel", 3, channel_fields);
  c->fd = -1;
  c->rfd = -1;
  c->high = cfg->high;
  c->low = cfg->low;
  c->hard = cfg->hard;
  c->readsize = cfg->readsize;
  c->linger_ms = cfg->linger_ms;
  c->stats = cfg->stats;
  if (c->stats) c->stats->refs++;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  c->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  if (fd >= 0) {
    set_fd(c, fd);
    c->connected = 1;
  }
  return c;
}

/* sys.tcp_accept(lsock, loc, lport, max, high, low, hard, readsize, linger_ms, stats) */
static int l_tcp_accept(lua_State *L) {
  mk_proc *p = caller(L, "tcp_accept");
  int lfd = mkd_sockfd(L, 1);
  lua_Integer max = luaL_checkinteger(L, 4), n = 0;
  mk_term *loc, *lport;
  const char *err;
  config cfg;
  static const char *const afields[] = { "host", "port" };
  mk_rtype *art;
  getconfig(L, 5, &cfg);
  /* Raising nothing from here on: the references would leak. */
  loc = mkl_toterm(L, 2, &err);
  lport = mkl_toterm(L, 3, &err);
  if (loc == NULL || lport == NULL) {
    mk_unref(loc);
    mk_unref(lport);
    return luaL_error(L, "market.sys.tcp_accept: the local end and port must be terms");
  }
  art = rtype("tcp-address", 2, afields);
  for (; n < max; n++) {
    char host[64], name[96];
    int port, fd = mkd_accept(lfd, host, sizeof host, &port);
    tconn *c;
    if (fd < 0) {
      int err = errno;
      mk_rtype_unref(art);
      mk_unref(loc);
      mk_unref(lport);
      if (err == EAGAIN) { lua_pushinteger(L, n); return 1; }
      lua_pushnil(L);
      lua_pushstring(L, mkd_strerror(err, name, sizeof name));
      return 2;
    }
    c = newconn(L, &cfg, fd, mk_rec(art, mk_cstr(host), mk_int(port)), mk_ref(loc), mk_ref(lport));
    if (c == NULL) continue;
    snprintf(name, sizeof name, "tcp %s:%d", host, port);
    mk_spawn(p, &tcpconn_behavior, c, name, NULL);
  }
  mk_rtype_unref(art);
  mk_unref(loc);
  mk_unref(lport);
  lua_pushinteger(L, n);
  return 1;
}

/* sys.tcp_manage(remote, loc, name, high, low, hard, readsize, linger_ms, stats) -> pid */
static int l_tcp_manage(lua_State *L) {
  mk_proc *p = caller(L, "tcp_manage");
  const char *name = luaL_checkstring(L, 3);
  mk_term *remote, *loc;
  const char *err;
  config cfg;
  tconn *c;
  getconfig(L, 4, &cfg);
  remote = mkl_toterm(L, 1, &err);
  loc = mkl_toterm(L, 2, &err);
  if (remote == NULL || loc == NULL) {
    mk_unref(remote);
    mk_unref(loc);
    return luaL_error(L, "market.sys.tcp_manage: the remote and local ends must be terms");
  }
  c = newconn(L, &cfg, -1, remote, loc, NULL);
  if (c == NULL) return luaL_error(L, "out of memory");
  lua_pushinteger(L, (lua_Integer)mk_spawn(p, &tcpconn_behavior, c, name, NULL));
  return 1;
}

void mkd_open_tcpconn(lua_State *L) {
  static const luaL_Reg stats_mt[] = {
    {"__index", stats_index}, {"__newindex", stats_newindex}, {"__gc", stats_gc},
    {"__tostring", stats_tostring}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {
    {"tcp_accept", l_tcp_accept}, {"tcp_manage", l_tcp_manage}, {"tcp_stats", l_tcp_stats},
    {NULL, NULL}};
  if (luaL_newmetatable(L, STATS_MT)) luaL_setfuncs(L, stats_mt, 0);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}

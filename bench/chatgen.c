/*
** chatgen.c: a load generator for examples/chat.lua (bench/chat.sh).
**
**   chatgen PORT USERS RATE SECONDS [PIDS [NATS_PIDS]]
**
** Connects USERS users to the chat server on loopback PORT and waits until
** every one has been welcomed and knows the USERS - 1 others (the names in
** its greeting plus "joined" lines, less "left" ones): only then is the
** room whole, on every worker of a cluster too.  Then, for SECONDS, every
** user sends RATE lines a second at a steady pace (user i's k-th line is
** due at (k + i / USERS) / RATE seconds into the window), each line
** "c<i> <k> <µs>": its sender, its number and when it was sent.  Every user
** reads everything.  When the window ends it stops sending and waits until
** every user has heard every line that the others sent, or until no line
** has come for DRAIN_STALL seconds (a server that cannot keep up has a
** backlog to work off first: that is not a loss).
**
** Prints the users' spread over the server's nodes (the "@node" suffix of
** the names the greetings gave them; "users-on-node-(none)" without a
** cluster), the lines sent, the lines delivered per second inside the
** window (chat lines the users read, the ones they sent excluded: the
** server does not echo a user's own lines), the offered rate
** (USERS * (USERS - 1) * RATE), the latency from a line's sending to its
** reading (p50, p99, p999), with PIDS (a comma-separated list) the CPU
** time (user + system) those processes spent in the window per delivered
** line, summed, with NATS_PIDS likewise nats-server's, and its own CPU
** time per delivered line.  Then the correctness check:
** "every-user-heard-every-line: yes" or "no", with the lines missing,
** those heard more often than sent, those out of order, and those the
** server was too far behind to take (a full socket buffer).
**
** Exits 0 when the room was whole and every line arrived once and in
** order, 1 otherwise, 2 on a usage error.  Stops by itself (READY_LIMIT,
** DRAIN_STALL).
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "measure.h"

/* How long the room may take to become whole: 200 users' presence crosses
** the cluster in well under a second; past this the server is stuck. */
#define READY_LIMIT 60.0
/* After the window, the lines still to come are given up when none has
** come for this long. */
#define DRAIN_STALL 5.0
/* At most this many users are connecting and not yet welcomed (the
** server's listen queue: see loadgen.c's RAMP). */
#define RAMP 64
/* The sending clock's tick: every tick sends the lines due by then. */
#define TICK 0.001

typedef struct user {
  ev_io io;
  char *buf;             /* bytes read, not yet a whole line; owned here */
  size_t len, cap;
  char *node;            /* the "@node" of its name, or NULL; owned here */
  long known;            /* other users it knows of */
  long sent;             /* lines it sent in the window */
  int connected, welcomed;
} user;

static user *users;      /* nusers of them, owned here, open until exit */
static int nusers, nopened, nwelcomed;
static double rate, window;
static struct sockaddr_in target;
static int measuring, draining, ready;
static double t0;        /* the window's start, µs (monotonic) */
static long long due;    /* lines sent so far, over every user */
static long long delivered, in_window, blocked, stray;
static long long comings;  /* joins and departures heard once the room was whole */
/* got[pair(r, s)]: the lines user r heard from user s; next[...]: the
** number of the line it expects next from s (one more than the last);
** misordered counts the lines that came with another number. */
static long *got, *next;
static long long misordered;

/* The index of the pair (r, s) in got and next. */
static size_t pair(long r, long s) { return (size_t)r * (size_t)nusers + (size_t)s; }

static ev_timer clock_w, limit_w;

/* The CPU time (user + system) of the processes in the comma-separated
** list, in seconds; -1 if one is gone. */
static double cpu_seconds(const char *pids) {
  double total = 0, t;
  const char *p = pids;
  char *q;
  for (;;) {
    long pid = strtol(p, &q, 10);
    if (q == p) return total;
    if ((t = bench_cpu_seconds(pid, NULL)) < 0) return -1;
    total += t;
    p = *q == ',' ? q + 1 : q;
  }
}

static void die(const char *what) { perror(what); exit(2); }

/* Whether every user heard every line the others sent.  Called on every
** read while draining: the count comes first, the pairs only once it
** adds up (lines heard twice could make it add up early). */
static int all_heard(void) {
  long long expected = 0;
  int r, s;
  for (s = 0; s < nusers; s++) expected += users[s].sent;
  if (delivered < expected * (nusers - 1)) return 0;
  for (r = 0; r < nusers; r++)
    for (s = 0; s < nusers; s++)
      if (s != r && got[pair(r, s)] < users[s].sent) return 0;
  return 1;
}

/* One line user u read (without its "\n"). */
static void on_line(user *u, char *line) {
  char *colon;
  if (strncmp(line, "welcome, you are ", 17) == 0) {
    char *name = line + 17, *end = strstr(name, "; here: "), *at, *p;
    if (end == NULL) return;
    *end = '\0';
    if ((at = strchr(name, '@')) != NULL && (u->node = strdup(at + 1)) == NULL) die("chatgen");
    p = end + 8;
    if (strcmp(p, "nobody else") != 0)
      for (u->known = 1; *p; p++) u->known += *p == ',';
    u->welcomed = 1;
    nwelcomed++;
    return;
  }
  if ((colon = strstr(line, ": c")) != NULL) {
    long s, k;
    double sent;
    long r = (long)(u - users);
    if (sscanf(colon + 3, "%ld %ld %lf", &s, &k, &sent) != 3 || s < 0 || s >= nusers) {
      stray++;
      return;
    }
    if (k != next[pair(r, s)]) misordered++;
    next[pair(r, s)] = k + 1;
    got[pair(r, s)]++;
    delivered++;
    if (measuring) { in_window++; bench_record(bench_now_us() - sent); }
    return;
  }
  {
    size_t n = strlen(line);
    if (n > 7 && strcmp(line + n - 7, " joined") == 0) u->known++, comings += ready;
    else if (n > 5 && strcmp(line + n - 5, " left") == 0) u->known--, comings += ready;
    else stray++;              /* "server shutting down", a reason: said below */
  }
}

static void open_more(struct ev_loop *loop);
static void start_window(struct ev_loop *loop);

static int room_whole(void) {
  int i;
  if (nwelcomed < nusers) return 0;
  for (i = 0; i < nusers; i++)
    if (users[i].known != nusers - 1) return 0;
  return 1;
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents) {
  user *u = (user *)w;
  char *nl, *p;
  ssize_t n;
  (void)revents;
  if (!u->connected) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      fprintf(stderr, "chatgen: connect: %s\n", strerror(err));
      exit(1);
    }
    u->connected = 1;
    ev_io_stop(loop, w);
    ev_io_set(w, w->fd, EV_READ);
    ev_io_start(loop, w);
    return;
  }
  if (u->cap - u->len < 4096) {
    size_t c = u->cap ? 2 * u->cap : 16384;
    if ((p = realloc(u->buf, c)) == NULL) die("chatgen");
    u->buf = p;
    u->cap = c;
  }
  n = read(w->fd, u->buf + u->len, u->cap - u->len);
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN) return;
    fprintf(stderr, "chatgen: user %ld: the server closed the connection\n", (long)(u - users));
    ev_io_stop(loop, w);
    ev_break(loop, EVBREAK_ALL);
    return;
  }
  u->len += (size_t)n;
  p = u->buf;
  while ((nl = memchr(p, '\n', u->len - (size_t)(p - u->buf))) != NULL) {
    int was = u->welcomed;
    *nl = '\0';
    on_line(u, p);
    p = nl + 1;
    if (u->welcomed && !was) open_more(loop);
  }
  u->len -= (size_t)(p - u->buf);
  memmove(u->buf, p, u->len);
  if (!ready && room_whole()) start_window(loop);
  else if (draining && all_heard()) ev_break(loop, EVBREAK_ALL);
}

static void open_more(struct ev_loop *loop) {
  while (nopened < nusers && nopened - nwelcomed < RAMP) {
    user *u = &users[nopened];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (fd < 0) die("chatgen: socket");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    connect(fd, (struct sockaddr *)&target, sizeof target);
    ev_io_init(&u->io, on_io, fd, EV_WRITE);
    ev_io_start(loop, &u->io);
    nopened++;
  }
}

static const char *server_pids, *nats_pids;
static double server_cpu0, nats_cpu0, server_cpu, nats_cpu, own_cpu0, own_cpu;

/* This process's own CPU time (user + system), in seconds. */
static double own_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* The window's end reads the CPU times: lines still arriving after it are
** counted in the check, not in the rates. */
static void window_end(void) {
  own_cpu = own_seconds();
  if (server_pids) server_cpu = cpu_seconds(server_pids);
  if (nats_pids) nats_cpu = cpu_seconds(nats_pids);
}

/* Sends every line due by now (the steady pace), or, past the window,
** stops sending and waits for the last ones. */
static void on_clock(struct ev_loop *loop, ev_timer *t, int revents) {
  double now = bench_now_us(), el = (now - t0) / 1e6;
  long long upto = (long long)((el < window ? el : window) * rate * nusers);
  char line[64];
  (void)revents;
  for (; due < upto; due++) {
    user *u = &users[due % nusers];
    int n = snprintf(line, sizeof line, "c%ld %ld %.0f\n", (long)(u - users), u->sent, now);
    if (write(u->io.fd, line, (size_t)n) == n) u->sent++;
    else blocked++;            /* the server is far behind: the line is not sent */
  }
  if (el >= window) {
    window_end();
    ev_timer_stop(loop, t);
    measuring = 0;
    draining = 1;
    ev_timer_stop(loop, &limit_w);
    ev_timer_set(&limit_w, DRAIN_STALL, DRAIN_STALL);
    ev_timer_start(loop, &limit_w);
    if (all_heard()) ev_break(loop, EVBREAK_ALL);
  }
}

static void start_window(struct ev_loop *loop) {
  ready = 1;
  measuring = 1;
  ev_timer_stop(loop, &limit_w);
  if (server_pids) server_cpu0 = cpu_seconds(server_pids);
  if (nats_pids) nats_cpu0 = cpu_seconds(nats_pids);
  own_cpu0 = own_seconds();
  t0 = bench_now_us();
  ev_timer_init(&clock_w, on_clock, 0, TICK);
  ev_timer_start(loop, &clock_w);
}

/* READY_LIMIT passed, or DRAIN_STALL: while lines keep coming, wait on. */
static void on_limit(struct ev_loop *loop, ev_timer *t, int revents) {
  static long long before = -1;
  (void)t; (void)revents;
  if (draining && delivered != before) { before = delivered; return; }
  if (draining)
    fprintf(stderr, "chatgen: no line came for %.0f s; giving up on the rest\n", DRAIN_STALL);
  if (!ready)
    fprintf(stderr, "chatgen: the room was not whole after %.0f s (%d of %d users welcomed)\n",
            READY_LIMIT, nwelcomed, nusers);
  ev_break(loop, EVBREAK_ALL);
}

static void print_spread(void) {
  int i, j;
  for (i = 0; i < nusers; i++) {
    int n = 0, seen = 0;
    const char *node = users[i].node ? users[i].node : "(none)";
    for (j = 0; j < i && !seen; j++)
      seen = strcmp(users[j].node ? users[j].node : "(none)", node) == 0;
    if (seen || !users[i].welcomed) continue;
    for (j = i; j < nusers; j++)
      n += users[j].welcomed && strcmp(users[j].node ? users[j].node : "(none)", node) == 0;
    printf("users-on-node-%s: %d\n", node, n);
  }
}

int main(int argc, char **argv) {
  struct ev_loop *loop = ev_default_loop(0);
  long long sent = 0, missing = 0, extra = 0, expected;
  int port, r, s, ok;
  if (argc < 5 || argc > 7) {
    fputs("usage: chatgen PORT USERS RATE SECONDS [PIDS [NATS_PIDS]]\n", stderr);
    return 2;
  }
  port = atoi(argv[1]);
  nusers = atoi(argv[2]);
  rate = atof(argv[3]);
  window = atof(argv[4]);
  server_pids = argc > 5 ? argv[5] : NULL;
  nats_pids = argc > 6 ? argv[6] : NULL;
  if (nusers < 2 || rate <= 0 || window <= 0) {
    fputs("chatgen: needs 2 users or more, a rate and a window above 0\n", stderr);
    return 2;
  }
  users = calloc((size_t)nusers, sizeof *users);
  got = calloc((size_t)nusers * (size_t)nusers, sizeof *got);
  next = calloc((size_t)nusers * (size_t)nusers, sizeof *next);
  if (users == NULL || got == NULL || next == NULL) die("chatgen");
  memset(&target, 0, sizeof target);
  target.sin_family = AF_INET;
  target.sin_port = htons((uint16_t)port);
  target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ev_timer_init(&limit_w, on_limit, READY_LIMIT, 0);
  ev_timer_start(loop, &limit_w);
  open_more(loop);
  /* The window ends at the clock's last tick; the loop breaks when the
  ** lines are all in (or a limit passed, or a connection closed). */
  ev_run(loop, 0);
  if (!ready) return 1;
  print_spread();
  for (s = 0; s < nusers; s++) sent += users[s].sent;
  expected = sent * (nusers - 1);
  for (r = 0; r < nusers; r++)
    for (s = 0; s < nusers; s++)
      if (s != r) {
        long d = users[s].sent - got[pair(r, s)];
        if (d > 0) missing += d;
        else extra -= d;
      }
  printf("users: %d\nlines-sent: %lld  (%.1f a second per user)\n", nusers, sent, rate);
  printf("lines-delivered-per-second: %.0f\n", (double)in_window / window);
  printf("offered-lines-per-second: %.0f  (users * (users - 1) * rate)\n",
         (double)nusers * (nusers - 1) * rate);
  bench_print_percentiles();
  if (server_pids && server_cpu >= 0 && server_cpu0 >= 0)
    printf("server-cpu-us-per-line: %.3f\n",
           in_window ? (server_cpu - server_cpu0) * 1e6 / (double)in_window : 0.0);
  if (nats_pids && nats_cpu >= 0 && nats_cpu0 >= 0)
    printf("nats-cpu-us-per-line: %.3f\n",
           in_window ? (nats_cpu - nats_cpu0) * 1e6 / (double)in_window : 0.0);
  printf("client-cpu-us-per-line: %.3f  (chatgen's)\n",
         in_window ? (own_cpu - own_cpu0) * 1e6 / (double)in_window : 0.0);
  ok = missing == 0 && extra == 0 && misordered == 0 && blocked == 0;
  printf("every-user-heard-every-line: %s  (%lld of %lld delivered; %lld missing, "
         "%lld more than sent, %lld out of order, %lld not sent)\n", ok ? "yes" : "no",
         delivered, expected, missing, extra, misordered, blocked);
  if (stray) fprintf(stderr, "chatgen: %lld lines not understood\n", stray);
  /* Nobody comes or goes once the room is whole: in a cluster, users who
  ** seem to are those of a node taken for lost (docs/cluster.md). */
  if (comings)
    fprintf(stderr, "chatgen: %lld arrivals and departures heard after the room was whole\n",
            comings);
  return ok ? 0 : 1;
}

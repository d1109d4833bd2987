/*
** loadgen.c: a closed-loop load generator for bench/echo.
**
**   loadgen tcp PORT CONNS SIZE SECONDS [PID]   echo round trips on CONNS connections
**   loadgen idle PORT CONNS PID                 RSS of server PID per idle connection
**   loadgen dns PORT OUTSTANDING SECONDS NAME   DNS A queries over UDP
**   loadgen turns SIZE SECONDS PORT...          one connection per server,
**                                               their round trips in turn
**
** tcp: each connection sends SIZE bytes, waits until all SIZE came back,
** and sends again.  The measurement starts once every connection has made
** its first round trip (so the server's accepting, and a session's
** creation, are not in the figures: those are steady-state figures) and
** lasts SECONDS.  Connections open at most RAMP at a time, and each waits
** after its first round trip until all have made theirs.  Prints
** "ready: N" (connections that made their first round trip),
** "round-trips-per-second: N", the round trips' latency percentiles
** ("latency-us-p50: N", p99, p999), and with PID the CPU time (user +
** system) that process spent per round trip in the same window
** ("server-cpu-us-per-round-trip: X") and the user part of it
** ("server-user-us-per-round-trip: X": the server's own code, steadier
** than the kernel's share, which moves with how the wake-ups batch).
**
** turns: the latency of one connection, for several servers at once: one
** connection to each PORT, and round trips on them in turn (the first
** server, then the second, ..., and again, who goes first turning each
** time), each server's trip starting when the one before it ended, so
** that each server is, as with tcp at one connection, alone with one
** request in flight, and all of them live through the same spells of a
** shared machine (timed one after the other, each p999 is set by what
** else ran in its own window: docs/performance.md, "Latency at one
** connection").  Prints, for the i-th PORT from 1,
** "server-i-round-trips: N" and its percentiles
** ("server-i-latency-us-p50: N", p99, p999).  A server silent for
** TURN_LIMIT seconds ends the run (exit 1).
**
** idle: reads server PID's resident set (VmRSS), opens CONNS connections,
** makes one 64-byte round trip on each (so the server holds whatever a
** live session holds), then leaves them idle; a second later reads the
** RSS again and prints both and "idle-bytes-per-connection: N".  The
** connections close when it exits.
**
** Loopback only; stops by itself (connections that are not all ready
** after READY_LIMIT seconds: it measures with those that are, says so on
** stderr and exits 1).
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "measure.h"

/* How long every connection may take to make its first round trip: 10,000
** connections against a slow server on a busy machine take a few seconds;
** past this the server is not keeping up, and the figures say so. */
#define READY_LIMIT 30.0

/* At most this many connections are opened and not yet ready: opening
** 10,000 at once overflows the server's listen queue, and a dropped
** handshake is retried after 1, 2, 4, 8 and 16 s, which measures the
** kernel's patience, not the server. */
#define RAMP 1000

typedef struct client {
  ev_io io;
  size_t got, sent;
  double start;          /* when this round trip's first byte went */
  int connected, ready;  /* connected; made its first round trip */
} client;

static size_t size;
static char *msg, rbuf[65536];
static unsigned long long trips;
static client *clients;  /* nconns of them, owned here, open until exit */
static struct sockaddr_in target;
static int nconns, nopened, nready, ndone;  /* done: ready, or failed first */
static int idle;         /* idle mode: all_ready ends the run, no window */
static int measuring;    /* inside the measured window */
static double window;    /* its length in seconds */
static double window_start, window_cpu;  /* when it started (µs), server's CPU then (s) */
static double window_user;               /* the user part of window_cpu (s) */
static long server_pid;  /* the server whose CPU or RSS is read; 0: none */
static ev_timer stop;

/* Resident set of process pid in KiB (VmRSS); -1 if it is gone. */
static long rss_kib(long pid) {
  char path[64], line[256];
  long kib = -1;
  FILE *f;
  snprintf(path, sizeof path, "/proc/%ld/status", pid);
  if ((f = fopen(path, "r")) == NULL) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld", &kib) == 1) break;
  fclose(f);
  return kib;
}

static void send_msg(client *c) {
  while (c->sent < size) {
    ssize_t n = write(c->io.fd, msg + c->sent, size - c->sent);
    if (n <= 0) return;
    c->sent += (size_t)n;
  }
}

/* Every connection is ready (or READY_LIMIT passed): in idle mode that is
** the end; otherwise the measured window starts now, every ready
** connection sending its next message at once.  (They wait for each
** other: connections that went on while later ones were still opening
** would slow the opening down, by a lot at 10,000.  Starting all at once
** is the steady state of a closed loop: every connection always has its
** message in flight.) */
static void all_ready(struct ev_loop *loop) {
  int i;
  if (idle || measuring) { ev_break(loop, EVBREAK_ALL); return; }
  measuring = 1;
  window_start = bench_now_us();
  if (server_pid) window_cpu = bench_cpu_seconds(server_pid, &window_user);
  ev_timer_stop(loop, &stop);
  ev_timer_set(&stop, window, 0);
  ev_timer_start(loop, &stop);
  for (i = 0; i < nopened; i++)
    if (clients[i].ready) {
      clients[i].start = window_start;
      send_msg(&clients[i]);
    }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents);

/* Opens connections while fewer than RAMP are on their way. */
static void open_more(struct ev_loop *loop) {
  while (nopened < nconns && nopened - ndone < RAMP) {
    client *c = &clients[nopened];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (fd < 0) {                /* out of descriptors: go on with those open */
      perror("loadgen: socket");
      nconns = nopened;
      if (ndone == nconns) all_ready(loop);
      return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    connect(fd, (struct sockaddr *)&target, sizeof target);
    ev_io_init(&c->io, on_io, fd, EV_WRITE);
    ev_io_start(loop, &c->io);
    nopened++;
  }
}

/* A connection made its first round trip (ready) or failed before it. */
static void conn_done(struct ev_loop *loop, int ready) {
  nready += ready;
  if (++ndone < nconns) open_more(loop);
  else if (!measuring) all_ready(loop);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents) {
  client *c = (client *)w;
  ssize_t n;
  (void)revents;
  if (!c->connected) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { ev_io_stop(loop, w); conn_done(loop, 0); return; }
    c->connected = 1;
    ev_io_stop(loop, w);
    ev_io_set(w, w->fd, EV_READ);
    ev_io_start(loop, w);
    c->start = bench_now_us();
    send_msg(c);
    return;
  }
  n = read(w->fd, rbuf, sizeof rbuf);
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN) return;
    ev_io_stop(loop, w);
    if (!c->ready) conn_done(loop, 0);
    return;
  }
  c->got += (size_t)n;
  if (c->sent < size) send_msg(c);
  if (c->got >= size) {
    double t = bench_now_us();
    if (measuring) { trips++; bench_record(t - c->start); }
    c->got -= size;
    c->sent = 0;
    c->start = t;
    if (!c->ready) {
      int late = measuring;     /* READY_LIMIT started the window without it */
      c->ready = 1;
      conn_done(loop, 1);
      if (!late) return;        /* it waits for all_ready */
    }
    send_msg(c);
  }
}

/* The window's end, or READY_LIMIT's: then go on with the ready ones. */
static void on_stop(struct ev_loop *loop, ev_timer *t, int revents) {
  (void)t; (void)revents;
  if (measuring) { ev_break(loop, EVBREAK_ALL); return; }
  fprintf(stderr, "loadgen: only %d of %d connections ready after %.0f s%s\n",
          nready, nconns, READY_LIMIT, idle ? "" : "; measuring with those");
  all_ready(loop);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

/* Opens conns connections to port (RAMP at a time) and runs the loop
** until all_ready or on_stop breaks it. */
static void run_clients(struct ev_loop *loop, int port, int conns) {
  target = loopback(port);
  clients = calloc((size_t)(conns > 0 ? conns : 1), sizeof *clients);
  if (clients == NULL || (msg = malloc(size)) == NULL) { perror("loadgen"); exit(2); }
  memset(msg, 'x', size);
  nconns = conns;
  ev_timer_init(&stop, on_stop, READY_LIMIT, 0);
  ev_timer_start(loop, &stop);
  if (nconns <= 0) all_ready(loop);
  else open_more(loop);
  ev_run(loop, 0);
}

static int tcp(int port, int conns, double secs) {
  struct ev_loop *loop = ev_default_loop(0);
  double elapsed, cpu, user = 0;
  window = secs;
  run_clients(loop, port, conns);
  elapsed = (bench_now_us() - window_start) / 1e6;
  cpu = server_pid ? bench_cpu_seconds(server_pid, &user) : 0;
  printf("ready: %d\nround-trips-per-second: %.0f\n", nready,
         elapsed > 0 ? (double)trips / elapsed : 0.0);
  bench_print_percentiles();
  if (server_pid) {
    if (cpu < 0 || window_cpu < 0) {
      fprintf(stderr, "loadgen: process %ld is gone\n", server_pid);
      return 1;
    }
    printf("server-cpu-us-per-round-trip: %.3f\n",
           trips ? (cpu - window_cpu) * 1e6 / (double)trips : 0.0);
    printf("server-user-us-per-round-trip: %.3f\n",
           trips ? (user - window_user) * 1e6 / (double)trips : 0.0);
  }
  return nready == conns ? 0 : 1;
}

static int idle_rss(int port, int conns) {
  struct ev_loop *loop = ev_default_loop(0);
  long before = rss_kib(server_pid), after;
  struct timespec settle = {1, 0};
  if (before < 0) { fprintf(stderr, "loadgen: no process %ld\n", server_pid); return 1; }
  idle = 1;
  size = 64;
  run_clients(loop, port, conns);
  /* The server answered every one; let it finish what follows an answer
  ** (a session's bookkeeping, a collector step) before the reading. */
  nanosleep(&settle, NULL);
  if ((after = rss_kib(server_pid)) < 0) {
    fprintf(stderr, "loadgen: process %ld is gone\n", server_pid);
    return 1;
  }
  printf("ready: %d\nserver-rss-kib-before: %ld\nserver-rss-kib-after: %ld\n"
         "idle-bytes-per-connection: %.0f\n", nready, before, after,
         nready ? (double)(after - before) * 1024 / nready : 0.0);
  return nready == conns ? 0 : 1;
}

/* DNS: a fixed query for NAME/A with rotating ids, OUTSTANDING in flight. */
static int dns(int port, int outstanding, double secs, const char *name) {
  unsigned char q[512], r[4096];
  size_t len = 12, i;
  const char *p = name;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = loopback(port);
  struct timeval tv = {0, 200000};
  unsigned long long answered = 0;
  struct timespec t0, t1;
  memset(q, 0, sizeof q);
  q[2] = 0x01;                 /* RD */
  q[5] = 1;                    /* QDCOUNT */
  while (*p) {
    const char *dot = strchr(p, '.');
    size_t l = dot ? (size_t)(dot - p) : strlen(p);
    q[len++] = (unsigned char)l;
    memcpy(q + len, p, l);
    len += l;
    p += l + (dot ? 1 : 0);
  }
  q[len++] = 0;
  q[len++] = 0; q[len++] = 1;  /* A */
  q[len++] = 0; q[len++] = 1;  /* IN */
  connect(fd, (struct sockaddr *)&a, sizeof a);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (i = 0; i < (size_t)outstanding; i++) { q[1] = (unsigned char)i; send(fd, q, len, 0); }
  for (;;) {
    ssize_t n = recv(fd, r, sizeof r, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if ((double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9 > secs) break;
    if (n > 0) answered++;
    q[1]++;
    send(fd, q, len, 0);       /* keep OUTSTANDING in flight (a lost one is replaced) */
  }
  printf("queries-per-second: %.0f\n", (double)answered /
         ((double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9));
  return answered ? 0 : 1;
}

/* Writes all of buf and reads as many bytes back (blocking): 0, or -1 if
** the server closed, failed or was silent past the socket's timeouts. */
static int round_trip(int fd, const char *buf, size_t n) {
  size_t sent = 0, got = 0;
  while (sent < n) {
    ssize_t k = write(fd, buf + sent, n - sent);
    if (k <= 0) { if (k < 0 && errno == EINTR) continue; return -1; }
    sent += (size_t)k;
  }
  while (got < n) {
    ssize_t k = read(fd, rbuf, sizeof rbuf);
    if (k <= 0) { if (k < 0 && errno == EINTR) continue; return -1; }
    got += (size_t)k;
  }
  return 0;
}

#define TURN_LIMIT 10

static int turns(size_t n, double secs, int nports, char **ports) {
  struct timeval limit = {TURN_LIMIT, 0};
  int *fds = calloc((size_t)nports, sizeof *fds), i, first = 0, one = 1;
  bench_samples *lat = calloc((size_t)nports, sizeof *lat);
  unsigned long long *count = calloc((size_t)nports, sizeof *count);
  char *buf = malloc(n), prefix[32];
  double end;
  if (fds == NULL || lat == NULL || count == NULL || buf == NULL) { perror("loadgen"); return 2; }
  memset(buf, 'x', n);
  for (i = 0; i < nports; i++) {
    struct sockaddr_in a = loopback(atoi(ports[i]));
    if ((fds[i] = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        connect(fds[i], (struct sockaddr *)&a, sizeof a) != 0) {
      fprintf(stderr, "loadgen: port %s: %s\n", ports[i], strerror(errno));
      return 1;
    }
    setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(fds[i], SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    /* a first trip outside the window: the session's creation */
    if (round_trip(fds[i], buf, n) != 0) {
      fprintf(stderr, "loadgen: port %s closed the connection\n", ports[i]);
      return 1;
    }
  }
  end = bench_now_us() + secs * 1e6;
  while (bench_now_us() < end) {
    for (i = 0; i < nports; i++) {
      int k = (first + i) % nports;
      double t = bench_now_us();
      if (round_trip(fds[k], buf, n) != 0) {
        fprintf(stderr, "loadgen: port %s closed the connection or went silent\n", ports[k]);
        return 1;
      }
      bench_samples_add(&lat[k], bench_now_us() - t);
      count[k]++;
    }
    first = (first + 1) % nports;
  }
  for (i = 0; i < nports; i++) {
    snprintf(prefix, sizeof prefix, "server-%d-", i + 1);
    printf("%sround-trips: %llu\n", prefix, count[i]);
    bench_samples_print(&lat[i], prefix);
    close(fds[i]);
  }
  return 0;
}

int main(int argc, char **argv) {
  if ((argc == 6 || argc == 7) && strcmp(argv[1], "tcp") == 0) {
    size = (size_t)atoi(argv[4]);
    server_pid = argc == 7 ? atol(argv[6]) : 0;
    return tcp(atoi(argv[2]), atoi(argv[3]), atof(argv[5]));
  }
  if (argc == 5 && strcmp(argv[1], "idle") == 0) {
    server_pid = atol(argv[4]);
    return idle_rss(atoi(argv[2]), atoi(argv[3]));
  }
  if (argc == 6 && strcmp(argv[1], "dns") == 0)
    return dns(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), argv[5]);
  if (argc >= 5 && strcmp(argv[1], "turns") == 0 && atoi(argv[2]) > 0)
    return turns((size_t)atoi(argv[2]), atof(argv[3]), argc - 4, argv + 4);
  fputs("usage: loadgen tcp PORT CONNS SIZE SECONDS [PID] | loadgen idle PORT CONNS PID"
        " | loadgen dns PORT OUTSTANDING SECONDS NAME | loadgen turns SIZE SECONDS PORT...\n",
        stderr);
  return 2;
}

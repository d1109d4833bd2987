/*
** loadgen.c: a closed-loop load generator for bench/echo.
**
**   loadgen tcp PORT CONNS SIZE SECONDS    echo round trips on CONNS connections
**   loadgen dns PORT OUTSTANDING SECONDS NAME   DNS A queries over UDP
**
** Each TCP connection sends SIZE bytes, waits until all SIZE came back,
** and sends again.  Prints "round-trips-per-second: N" (tcp) or
** "queries-per-second: N" (dns), and for tcp "connected: N" and the round
** trips' latency percentiles ("latency-us-p50: N", p99, p999).  Loopback
** only; stops by itself after SECONDS.
*/
#include <arpa/inet.h>
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
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

typedef struct client {
  ev_io io;
  size_t got, sent;
  double start;          /* when this round trip's first byte went */
  int connected;
} client;

static size_t size;
static char *msg, rbuf[65536];
static unsigned long long trips;
static int nconnected;

/* Every round trip's latency in µs, kept whole for exact percentiles
** (closed loop: at most a few million per run).  Owned here, grown by
** doubling. */
static float *lat;
static size_t nlat, caplat;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void record(double us) {
  if (nlat == caplat) {
    size_t n = caplat ? 2 * caplat : 65536;
    float *p = realloc(lat, n * sizeof *p);
    if (p == NULL) return;       /* the rates still count; percentiles undercount */
    lat = p;
    caplat = n;
  }
  lat[nlat++] = (float)us;
}

static int by_value(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static void print_percentiles(void) {
  static const struct { const char *name; double q; } ps[] = {
    {"p50", 0.50}, {"p99", 0.99}, {"p999", 0.999}};
  size_t i;
  if (nlat == 0) return;
  qsort(lat, nlat, sizeof *lat, by_value);
  for (i = 0; i < sizeof ps / sizeof ps[0]; i++) {
    size_t k = (size_t)(ps[i].q * (double)(nlat - 1) + 0.5);
    printf("latency-us-%s: %.0f\n", ps[i].name, (double)lat[k]);
  }
}

static void send_msg(client *c) {
  while (c->sent < size) {
    ssize_t n = write(c->io.fd, msg + c->sent, size - c->sent);
    if (n <= 0) return;
    c->sent += (size_t)n;
  }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents) {
  client *c = (client *)w;
  ssize_t n;
  if (!c->connected) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { ev_io_stop(loop, w); return; }
    c->connected = 1;
    nconnected++;
    ev_io_stop(loop, w);
    ev_io_set(w, w->fd, EV_READ);
    ev_io_start(loop, w);
    c->start = now_us();
    send_msg(c);
    return;
  }
  n = read(w->fd, rbuf, sizeof rbuf);
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN) return;
    ev_io_stop(loop, w);
    return;
  }
  c->got += (size_t)n;
  if (c->sent < size) send_msg(c);
  if (c->got >= size) {
    double t = now_us();
    trips++;
    record(t - c->start);
    c->got -= size;
    c->sent = 0;
    c->start = t;
    send_msg(c);
  }
}

static void on_stop(struct ev_loop *loop, ev_timer *t, int revents) {
  ev_break(loop, EVBREAK_ALL);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

static int tcp(int port, int conns, double secs) {
  struct ev_loop *loop = ev_default_loop(0);
  struct sockaddr_in a = loopback(port);
  client *cs = calloc((size_t)conns, sizeof *cs);
  ev_timer stop;
  ev_tstamp t0;
  int i;
  msg = malloc(size);
  memset(msg, 'x', size);
  for (i = 0; i < conns; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (fd < 0) { perror("loadgen: socket"); break; }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    connect(fd, (struct sockaddr *)&a, sizeof a);
    ev_io_init(&cs[i].io, on_io, fd, EV_WRITE);
    ev_io_start(loop, &cs[i].io);
  }
  ev_timer_init(&stop, on_stop, secs, 0);
  ev_timer_start(loop, &stop);
  ev_now_update(loop);
  t0 = ev_now(loop);
  ev_run(loop, 0);
  ev_now_update(loop);
  printf("connected: %d\nround-trips-per-second: %.0f\n", nconnected,
         (double)trips / (ev_now(loop) - t0));
  print_percentiles();
  return nconnected == conns ? 0 : 1;
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

int main(int argc, char **argv) {
  if (argc == 6 && strcmp(argv[1], "tcp") == 0) {
    size = (size_t)atoi(argv[4]);
    return tcp(atoi(argv[2]), atoi(argv[3]), atof(argv[5]));
  }
  if (argc == 6 && strcmp(argv[1], "dns") == 0)
    return dns(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), argv[5]);
  fputs("usage: loadgen tcp PORT CONNS SIZE SECONDS | loadgen dns PORT OUTSTANDING SECONDS NAME\n", stderr);
  return 2;
}

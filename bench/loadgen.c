/*
** loadgen.c: a closed-loop load generator for bench/echo.
**
**   loadgen tcp PORT CONNS SIZE SECONDS    echo round trips on CONNS connections
**   loadgen dns PORT OUTSTANDING SECONDS NAME   DNS A queries over UDP
**
** Each TCP connection sends SIZE bytes, waits until all SIZE came back,
** and sends again.  Prints "round-trips-per-second: N" (tcp) or
** "queries-per-second: N" (dns), and "connected: N" for tcp.  Loopback
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
  int connected;
} client;

static size_t size;
static char *msg, rbuf[65536];
static unsigned long long trips;
static int nconnected;

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
    trips++;
    c->got -= size;
    c->sent = 0;
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

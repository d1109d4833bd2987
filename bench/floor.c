/*
** floor.c: the listener and connections of the benchmarks' plain libev
** servers (floor.h).
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "floor.h"

/* The size and read callback of the server's connections (one server a
** process). */
static size_t conn_size;
static floor_read *conn_read;

void floor_close(struct ev_loop *loop, floor_conn *c) {
  ev_io_stop(loop, &c->r);
  ev_io_stop(loop, &c->w);
  close(c->r.fd);
  free(c->held);
  free(c);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents) {
  floor_conn *c = w->data;
  ssize_t n = write(w->fd, c->held, c->hlen);
  (void)revents;
  if (n < 0 && errno != EAGAIN) { floor_close(loop, c); return; }
  if (n > 0) {
    memmove(c->held, c->held + n, c->hlen - (size_t)n);
    c->hlen -= (size_t)n;
  }
  if (c->hlen == 0) { ev_io_stop(loop, &c->w); ev_io_start(loop, &c->r); }
}

void floor_send(struct ev_loop *loop, floor_conn *c, const char *p, size_t n) {
  ssize_t m = write(c->r.fd, p, n);
  if (m < 0) { if (errno != EAGAIN) { floor_close(loop, c); return; } m = 0; }
  if ((size_t)m < n) {      /* hold the rest, stop reading until it is out */
    char *held = realloc(c->held, n - (size_t)m);
    if (held == NULL) { perror("floor"); exit(1); }
    memcpy(held, p + m, n - (size_t)m);
    c->held = held;
    c->hlen = n - (size_t)m;
    ev_io_stop(loop, &c->r);
    ev_io_start(loop, &c->w);
  }
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
  (void)revents;
  for (;;) {
    int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK), one = 1;
    floor_conn *c;
    if (fd < 0) return;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if ((c = calloc(1, conn_size)) == NULL) { close(fd); continue; }
    ev_io_init(&c->r, conn_read, fd, EV_READ);
    ev_io_init(&c->w, on_write, fd, EV_WRITE);
    c->r.data = c->w.data = c;
    ev_io_start(loop, &c->r);
  }
}

int floor_run(const char *name, int port, size_t size, floor_read *on_read) {
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  struct ev_loop *loop = ev_default_loop(0);
  ev_io acc;
  conn_size = size;
  conn_read = on_read;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0 ||
      getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
    perror(name);
    return 1;
  }
  fprintf(stderr, "%s: listening on port %d\n", name, ntohs(a.sin_port));
  ev_io_init(&acc, on_accept, fd, EV_READ);
  ev_io_start(loop, &acc);
  ev_run(loop, 0);
  return 0;
}

/*
** echo_floor.c: the floor for bench/echo: a plain single-threaded libev
** TCP echo server, as lean as such a server gets.
**
**   echo_floor [PORT]    (default 5998; 0: the kernel picks)
**
** Prints "echo_floor: listening on port N" on stderr once it listens.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "floor.h"

typedef struct conn {
  ev_io r, w;
  char *pending;          /* owned: bytes not yet written back */
  size_t plen;
} conn;

static char buf[65536];

static void conn_close(struct ev_loop *loop, conn *c) {
  ev_io_stop(loop, &c->r);
  ev_io_stop(loop, &c->w);
  close(c->r.fd);
  free(c->pending);
  free(c);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents) {
  conn *c = w->data;
  ssize_t n = write(w->fd, c->pending, c->plen);
  if (n < 0 && errno != EAGAIN) { conn_close(loop, c); return; }
  if (n > 0) {
    memmove(c->pending, c->pending + n, c->plen - (size_t)n);
    c->plen -= (size_t)n;
  }
  if (c->plen == 0) { ev_io_stop(loop, &c->w); ev_io_start(loop, &c->r); }
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents) {
  conn *c = w->data;
  ssize_t n = read(w->fd, buf, sizeof buf), m;
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN) return;
    conn_close(loop, c);
    return;
  }
  m = write(w->fd, buf, (size_t)n);
  if (m < 0) { if (errno != EAGAIN) { conn_close(loop, c); return; } m = 0; }
  if (m < n) {            /* hold the rest, stop reading until it is out */
    c->pending = realloc(c->pending, (size_t)(n - m));
    memcpy(c->pending, buf + m, (size_t)(n - m));
    c->plen = (size_t)(n - m);
    ev_io_stop(loop, &c->r);
    ev_io_start(loop, &c->w);
  }
}

static void accepted(struct ev_loop *loop, int fd) {
  conn *c = calloc(1, sizeof *c);
  if (c == NULL) { close(fd); return; }
  ev_io_init(&c->r, on_read, fd, EV_READ);
  ev_io_init(&c->w, on_write, fd, EV_WRITE);
  c->r.data = c->w.data = c;
  ev_io_start(loop, &c->r);
}

int main(int argc, char **argv) {
  return floor_run("echo_floor", argc > 1 ? atoi(argv[1]) : 5998, accepted);
}

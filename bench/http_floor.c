/*
** http_floor.c: the floor for bench/http: a plain single-threaded libev
** server that answers every request with one fixed hello-world response,
** as lean as an HTTP server gets.  It parses nothing but the blank line
** that ends a head (wrk's GETs have no body), kept across reads.
**
**   http_floor [PORT]    (default 5997; 0: the kernel picks)
**
** Prints "http_floor: listening on port N" on stderr once it listens.
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

static const char RESPONSE[] =
  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n";
#define RLEN (sizeof RESPONSE - 1)

typedef struct conn {
  ev_io r, w;
  int seen;               /* how much of "\r\n\r\n" the last bytes read end with */
  char *out;              /* owned: responses not yet written */
  size_t olen, ocap;
} conn;

static char buf[65536];

static void conn_close(struct ev_loop *loop, conn *c) {
  ev_io_stop(loop, &c->r);
  ev_io_stop(loop, &c->w);
  close(c->r.fd);
  free(c->out);
  free(c);
}

/* Writes what is held; stops reading while some is left. */
static void flush(struct ev_loop *loop, conn *c) {
  ssize_t n = write(c->r.fd, c->out, c->olen);
  if (n < 0 && errno != EAGAIN) { conn_close(loop, c); return; }
  if (n > 0) {
    memmove(c->out, c->out + n, c->olen - (size_t)n);
    c->olen -= (size_t)n;
  }
  if (c->olen == 0) { ev_io_stop(loop, &c->w); ev_io_start(loop, &c->r); }
  else { ev_io_stop(loop, &c->r); ev_io_start(loop, &c->w); }
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents) {
  (void)revents;
  flush(loop, w->data);
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents) {
  static const char end[] = "\r\n\r\n";
  conn *c = w->data;
  ssize_t n = read(w->fd, buf, sizeof buf), i;
  size_t reqs = 0;
  (void)revents;
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN) return;
    conn_close(loop, c);
    return;
  }
  for (i = 0; i < n; i++) {
    if (buf[i] == end[c->seen]) c->seen++;
    else c->seen = buf[i] == '\r';
    if (c->seen == 4) { reqs++; c->seen = 0; }
  }
  if (reqs == 0) return;
  if (c->olen + reqs * RLEN > c->ocap) {
    c->ocap = c->olen + reqs * RLEN;
    if ((c->out = realloc(c->out, c->ocap)) == NULL) { perror("http_floor"); exit(1); }
  }
  while (reqs--) { memcpy(c->out + c->olen, RESPONSE, RLEN); c->olen += RLEN; }
  flush(loop, c);
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
  return floor_run("http_floor", argc > 1 ? atoi(argv[1]) : 5997, accepted);
}
